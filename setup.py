"""Builds the extension vrwkv._vrwkv with the project's CMake, for the interpreter running this script.

The build folder is $VRWKV_BUILD_DIR when set (an existing, configured build: only the extension is built there),
else build/pip/cmake. The version is the one CMakeLists.txt declares.
"""
import os
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def version():
    with open(os.path.join(ROOT, "CMakeLists.txt"), encoding="utf-8") as f:
        match = re.search(r"project\(vrwkv VERSION ([0-9.]+)", f.read())
    if not match:
        sys.exit("setup.py: CMakeLists.txt declares no 'project(vrwkv VERSION x.y.z)'")
    return match.group(1)


class CMakeBuild(build_ext):
    """Configures (once) and builds the target vrwkv_python, then copies the module where setuptools wants it."""

    def build_extension(self, ext):
        build = os.environ.get("VRWKV_BUILD_DIR") or os.path.join(ROOT, "build", "pip", "cmake")
        build = os.path.abspath(build)
        python = os.path.realpath(sys.executable)  # the venv's interpreter resolves to the one it was made from
        if not os.path.isfile(os.path.join(build, "CMakeCache.txt")):
            subprocess.check_call(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DVRWKV_PYTHON=ON",
                                   "-DVRWKV_TESTS=OFF", f"-DPython3_EXECUTABLE={python}"])
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
        subprocess.check_call(["cmake", "--build", build, "--target", "vrwkv_python", "-j", jobs])
        folder = os.path.join(build, "python", "vrwkv")
        built = [f for f in os.listdir(folder) if f.startswith("_vrwkv.") and f.endswith(".so")]
        suffix = os.path.basename(self.get_ext_filename(ext.name)).split(".", 1)[1]
        match = [f for f in built if f.endswith(suffix)]
        if not match:
            sys.exit(f"setup.py: {folder} has no _vrwkv.{suffix} (found {built}); the build folder was configured "
                     f"for another interpreter than {python}")
        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(folder, match[0]), target)


os.makedirs(os.path.join(ROOT, "build", "pip"), exist_ok=True)  # egg_base
setup(
    version=version(),
    package_dir={"": "python"},
    packages=["vrwkv"],
    ext_modules=[Extension("vrwkv._vrwkv", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    options={"build": {"build_base": os.path.join("build", "pip", "setuptools")},
             "egg_info": {"egg_base": os.path.join("build", "pip")}},
)
