"""vrwkv.train and vrwkv.train_iter: the CLI's training loop from Python, its records, stops and resumes."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import vrwkv
from conftest import read_safetensors

FASHION = os.environ.get("VRWKV_FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist"
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION, "train-images-idx3-ubyte.gz")),
                                reason=f"Fashion-MNIST is not at {FASHION} (Debian's dataset-fashion-mnist)")


def config(epochs=2, log_every=2):
    """A run of seconds: 128 training images, 16 steps, two evaluations on 64 test images."""
    return {"model": {"embed_dims": 16, "depth": 2, "patch_size": 7, "in_channels": 1, "image_size": [28, 28]},
            "data": {"train": "fashion-mnist:train", "val": "fashion-mnist:test", "train_limit": 128,
                     "val_limit": 64},
            "augment": {"random_crop_padding": 2, "hflip": 0.5},
            "optim": {"lr": 3e-3, "drop_path": 0.1},
            "epochs": epochs, "batch_size": 16, "seed": 3, "log_every": log_every, "checkpoint_every": 1}


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def same_model(a, b):
    x, y = read_safetensors(os.path.join(a, "model.safetensors")), read_safetensors(os.path.join(b, "model.safetensors"))
    assert sorted(x) == sorted(y)
    for name in x:
        assert x[name].tobytes() == y[name].tobytes(), f"{name} differs"


def test_train_hands_every_metrics_record_to_the_callback_and_returns_the_final_evaluation(tmp_path):
    records = []
    result = vrwkv.train(config(), tmp_path / "run", callback=records.append, threads=1, progress=False)
    # The callback saw exactly what metrics.jsonl holds, in order: 8 step records and 2 evaluation records.
    assert records == metrics(tmp_path / "run")
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8, 10, 12, 14, 16]
    evals = [r for r in records if "val_top1" in r]
    assert [r["step"] for r in evals] == [8, 16]
    assert result == {"top1": evals[-1]["val_top1"], "top5": evals[-1]["val_top5"], "loss": evals[-1]["val_loss"],
                      "images": 64}
    model = vrwkv.load(tmp_path / "run" / "model.safetensors", threads=1)
    assert model.num_classes == 10
    assert model(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)


def test_train_from_python_gives_the_command_lines_model_bit_for_bit(tmp_path):
    cli = os.environ.get("VRWKV_CLI_PATH")
    if not cli:
        pytest.skip("VRWKV_CLI_PATH is not set (ctest sets it)")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config()))
    subprocess.run([cli, "train", "-c", str(path), "-o", str(tmp_path / "cli"), "--threads", "1", "--no-progress"],
                   check=True, capture_output=True)
    vrwkv.train(str(path), tmp_path / "py", threads=1, progress=False)  # a path, as the CLI reads it
    same_model(tmp_path / "cli", tmp_path / "py")
    assert [r["loss"] for r in metrics(tmp_path / "cli") if "loss" in r] == \
           [r["loss"] for r in metrics(tmp_path / "py") if "loss" in r]


def test_a_callback_that_raises_stops_the_run_with_a_checkpoint_and_resume_continues_bit_for_bit(tmp_path):
    vrwkv.train(config(), tmp_path / "whole", threads=1, progress=False)

    class Enough(Exception):
        pass

    def stop_at_6(record):
        if record["step"] >= 6:
            raise Enough("step 6")

    with pytest.raises(Enough, match="step 6"):
        vrwkv.train(config(), tmp_path / "parts", callback=stop_at_6, threads=1, progress=False)
    assert os.path.isfile(tmp_path / "parts" / "checkpoint.safetensors")
    assert not os.path.exists(tmp_path / "parts" / "model.safetensors")  # the run did not finish
    assert metrics(tmp_path / "parts")[-1]["step"] == 6  # nothing was logged after the callback raised
    result = vrwkv.train(None, tmp_path / "parts", resume=True, threads=1, progress=False)
    assert result is not None and result["images"] == 64
    same_model(tmp_path / "whole", tmp_path / "parts")
    assert metrics(tmp_path / "whole") == [dict(r, images_per_second=w["images_per_second"])
                                           if "images_per_second" in r else r
                                           for r, w in zip(metrics(tmp_path / "parts"), metrics(tmp_path / "whole"))]


def test_stop_after_and_train_iter_leaving_the_loop_both_leave_a_resumable_checkpoint(tmp_path):
    vrwkv.train(config(), tmp_path / "whole", threads=1, progress=False)
    assert vrwkv.train(config(), tmp_path / "a", stop_after=5, threads=1, progress=False) is None  # no eval yet
    assert not os.path.exists(tmp_path / "a" / "model.safetensors")
    vrwkv.train(None, tmp_path / "a", resume=True, threads=1, progress=False)
    same_model(tmp_path / "whole", tmp_path / "a")

    seen = []
    with vrwkv.train_iter(config(), tmp_path / "b", threads=1, progress=False) as records:
        for record in records:
            seen.append(record["step"])
            if record["step"] >= 4:
                break
    assert seen == [2, 4]
    assert not os.path.exists(tmp_path / "b" / "model.safetensors")
    # The whole run, iterated to its end, from the checkpoint the break left.
    rest = vrwkv.train_iter(None, tmp_path / "b", resume=True, threads=1, progress=False)
    steps = [r["step"] for r in rest if "loss" in r]
    assert steps[-1] == 16 and steps[0] > 4
    assert rest.result is not None and rest.result["images"] == 64
    same_model(tmp_path / "whole", tmp_path / "b")


def test_an_error_of_the_run_is_raised_from_the_iteration(tmp_path):
    bad = config()
    bad["data"]["train"] = str(tmp_path / "no such folder")
    records = vrwkv.train_iter(bad, tmp_path / "run", threads=1, progress=False)
    with pytest.raises(vrwkv.InputError, match="no such folder"):
        next(records)
    with pytest.raises(StopIteration):
        next(records)


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_raises_keyboard_interrupt(tmp_path):
    out = tmp_path / "run"
    script = (f"import sys, vrwkv\n"
              f"cfg = {config(epochs=200, log_every=1)!r}\n"
              f"def started(r):\n"
              f"    if r['step'] == 1: print('started', flush=True)\n"
              f"vrwkv.train(cfg, {str(out)!r}, callback=started, threads=1, progress=False)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=os.environ)
    assert child.stdout.readline().strip() == "started"
    time.sleep(0.2)  # inside the engine, between callbacks
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode != 0
    assert "KeyboardInterrupt" in stderr and "checkpoint written" in stderr, stderr
    assert not os.path.exists(out / "model.safetensors")
    stopped_at = metrics(out)[-1]["step"]
    assert 1 <= stopped_at < 1600
    # The run continues from where Ctrl-C left it.
    records = []
    vrwkv.train(None, out, resume=True, stop_after=stopped_at + 3, callback=records.append, threads=1,
                progress=False)
    assert [r["step"] for r in records if "loss" in r] == [stopped_at + 1, stopped_at + 2, stopped_at + 3]


def test_bad_training_arguments_are_input_errors_naming_what_was_wrong(tmp_path):
    out = tmp_path / "run"
    cases = [
        (dict(config={"epoch": 3}), "epoch"),                          # unknown key (a typo)
        (dict(config=None), "config"),                                 # neither a config nor resume
        (dict(config=config(), resume=True), "resume"),                # both
        (dict(config=42), "config"),
        (dict(config=str(tmp_path / "missing.json")), "missing.json"),
        (dict(config={"x": object()}), "config"),                      # not JSON
        (dict(config=config(), out_dir=3), "out_dir"),
        (dict(config=config(), stop_after=0), "stop_after"),
        (dict(config=config(), threads=-2), "threads"),
        (dict(config=config(), callback=5), "callback"),
        (dict(config=config(), resume="yes"), "resume"),
        (dict(config=None, resume=True), "checkpoint"),                # nothing to resume
    ]
    for kwargs, named in cases:
        kwargs.setdefault("out_dir", out)
        with pytest.raises(vrwkv.InputError, match=named):
            vrwkv.train(kwargs.pop("config"), kwargs.pop("out_dir"), progress=False, **kwargs)
    assert not os.path.exists(out / "model.safetensors")
    # A folder holding a run is not replaced unless asked (force=True).
    vrwkv.train(config(epochs=1), out, threads=1, progress=False)
    with pytest.raises(vrwkv.InputError, match="force"):
        vrwkv.train(config(epochs=1), out, threads=1, progress=False)
    vrwkv.train(config(epochs=1), out, force=True, threads=1, progress=False)
