"""The package as users install it: the README's offline pip command into a venv, then import from elsewhere."""
import os
import re
import subprocess
import sys

import pytest

import vrwkv
from conftest import SOURCE


def test_the_version_is_the_one_cmake_declares():
    with open(os.path.join(SOURCE, "CMakeLists.txt")) as f:
        declared = re.search(r"project\(vrwkv VERSION ([0-9.]+)", f.read()).group(1)
    assert vrwkv.__version__ == declared


def test_pip_installs_the_package_offline_into_a_venv(tmp_path):
    build = os.environ.get("VRWKV_BUILD_DIR")
    if not build:
        pytest.skip("VRWKV_BUILD_DIR is not set (ctest sets it to its build folder, so that nothing is rebuilt)")
    venv = tmp_path / "venv"
    made = subprocess.run([os.path.realpath(sys.executable), "-m", "venv", "--system-site-packages", str(venv)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no venv for {sys.executable} (Debian's python3-venv): {made.stderr.strip()[-200:]}")
    python = str(venv / "bin" / "python")
    env = dict(os.environ, VRWKV_BUILD_DIR=build)
    env.pop("PYTHONPATH", None)  # the installed package, not the build tree's
    subprocess.run([python, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--quiet", SOURCE],
                   check=True, env=env, cwd=tmp_path)
    probe = ("import numpy, vrwkv; m = vrwkv.create_model('vrwkv_t', num_classes=3, threads=1); "
             "print(vrwkv.__file__); print(m(numpy.zeros((1, 3, 224, 224), numpy.float32)).shape)")
    out = subprocess.run([python, "-c", probe], check=True, env=env, cwd=tmp_path, capture_output=True,
                         text=True).stdout.split("\n")
    assert out[0].startswith(str(venv)), out  # imported from the venv's site-packages
    assert out[1] == "(1, 3)"
