"""Segmentors and detectors through vrwkv.load: the dense goldens, the test pipelines, the CLI's outputs, errors."""
import json
import os
import subprocess

import numpy as np
import pytest

import vrwkv
from conftest import GOLDEN, max_error, read_safetensors, require_golden

# The C++ golden tests' bounds (tests/test_segmentor_golden.cpp, test_detector_golden.cpp): 5e-5·max(1, max|golden|)
# for logits, boxes and scores, a float32 run of the official code landing within a few 1e-6 of the float64 goldens.
DENSE_TOL = 5e-5


def dense_case(name):
    """(description, tensors, the segmentor loaded with the case's backbone settings)."""
    require_golden()
    base = os.path.join(GOLDEN, "dense", name)
    with open(base + ".json") as f:
        j = json.load(f)
    options = dict(interaction_indexes=j["interaction_indexes"], deform_heads=j["deform_num_heads"],
                   deform_points=j["n_points"], post_norm=j["config"]["backbone"].get("post_norm", False),
                   wkv="official", wkv_chunks=j["wkv_token_split"])
    return j, read_safetensors(base + ".safetensors"), base + ".pth", options


@pytest.mark.parametrize("name", ["dense_small_96x128_whole", "dense_small_80x120_slide_postnorm"])
def test_every_segmentation_golden_through_load(name):
    j, g, checkpoint, options = dense_case(name)
    seg = vrwkv.load(checkpoint, threads=2, **options)
    assert isinstance(seg, vrwkv.Segmentor) and seg.num_classes == 19
    test = j["test_cfg"]
    kwargs = dict(mode=test["mode"])
    if test["mode"] == "slide":
        kwargs.update(crop=test["crop_size"], stride=test["stride"])
    logits = seg(g["input"], out_size=j["ori_shape"], **kwargs)
    assert max_error(logits, g["seg.logits"]) <= DENSE_TOL


def test_the_detection_golden_end_to_end_through_load():
    require_golden()
    base = os.path.join(GOLDEN, "det_e2e", "det_e2e_s1_72x100_r96x133")
    with open(base + ".json") as f:
        j = json.load(f)
    g = read_safetensors(base + ".safetensors")
    bb = j["config"]["backbone"]
    det = vrwkv.load(base + ".pth", threads=2, interaction_indexes=bb["interaction_indexes"],
                     deform_heads=bb["deform_num_heads"], deform_points=bb["n_points"],
                     post_norm=bb.get("post_norm", False), wkv="official", wkv_chunks=j["wkv_token_split"])
    assert isinstance(det, vrwkv.Detector)
    meta = {k: tuple(g[k].tolist()) for k in ("ori_shape", "img_shape", "pad_shape", "scale_factor")}
    d = det.detect(g["input"], meta=meta)
    n = int(g["num_dets"][0])
    assert d["scores"].shape == (n,) and d["proposals"] == int(g["num_proposals"][0])
    assert max_error(d["boxes"], g["det.bboxes"]) <= DENSE_TOL
    assert max_error(d["scores"], g["det.scores"]) <= DENSE_TOL
    assert (d["labels"] == g["det.labels"]).all()
    # Binary masks: equal except near the 0.5 threshold (the golden lists those pixels), as the C++ test allows.
    near = np.zeros(g["mask.binary"].shape, bool)
    near[tuple(g["mask.near_thr_idx"].T)] = True
    differ = (d["masks"] != 0) != (g["mask.binary"] != 0)
    assert (differ & ~near).sum() <= g["mask.binary"].size // 1000
    # A higher score threshold keeps exactly the detections at or above it, in order.
    high = det.detect(g["input"], meta=meta, score_thr=0.5, masks=False)
    keep = d["scores"] >= 0.5
    assert np.array_equal(high["scores"], d["scores"][keep]) and high["masks"] is None


def test_the_ade20k_pipeline_matches_its_golden_and_segment_matches_the_cli(tmp_path):
    require_golden()
    folder = os.path.join(GOLDEN, "dense", "preprocess")
    seg = vrwkv.create_model("upernet_vrwkv_t", threads=2)  # the official initialisation: any weights do here
    g = read_safetensors(os.path.join(folder, "rocket.safetensors"))
    photo = os.path.join(folder, "rocket.jpg")
    x = seg.preprocess(photo)
    assert x.shape == g["input"].shape and float(np.abs(x - g["input"]).max()) <= 1e-6  # the C++ test's bound
    from PIL import Image
    pixels = np.asarray(Image.open(photo).convert("RGB"))
    # Decoded by Pillow instead of the engine: the same JPEG decoder (libjpeg-turbo), the same pixels.
    assert np.array_equal(seg.preprocess(pixels), x)
    # segment() at the photo's size, against `vrwkv segment` on the same preset (whole mode: one call, quick).
    cli = os.environ.get("VRWKV_CLI_PATH")
    if not cli:
        pytest.skip("VRWKV_CLI_PATH is not set (ctest sets it)")
    labels = seg.segment(photo, mode="whole")
    assert labels.shape == (427, 640) and labels.dtype == np.uint8
    subprocess.run([cli, "segment", "--model", "upernet_vrwkv_t", "--mode", "whole", "--threads", "2", photo, "-o",
                    str(tmp_path)], check=True, capture_output=True)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "rocket.png")), labels)


def test_dense_presets_and_their_names():
    names = vrwkv.list_models()
    assert {"upernet_vrwkv_t", "upernet_vrwkv_l", "mask_rcnn_vrwkv_t", "mask_rcnn_vrwkv_l"} <= set(names)
    det = vrwkv.create_model("mask_rcnn_vrwkv_t", threads=1)
    assert det.num_classes == 80 and det.class_names[0] == "person" and det.score_thr == pytest.approx(0.05)
    seg = vrwkv.create_model("upernet_vrwkv_t", threads=1)
    assert seg.num_classes == 150 and seg.class_names[0] == "wall" and seg.palette.shape == (150, 3)
    assert seg.config["test_mode"] == "slide"


def test_dense_errors_name_what_was_wrong():
    require_golden()
    _, g, checkpoint, options = dense_case("dense_small_96x128_whole")
    with pytest.raises(vrwkv.InputError, match="out_indices"):
        vrwkv.load(checkpoint, out_indices=(1,))
    with pytest.raises(vrwkv.InputError, match="shift"):
        vrwkv.load(checkpoint, shift="1d")  # a classifier's option
    with pytest.raises(vrwkv.InputError, match="interaction_indexes"):
        vrwkv.load(checkpoint, interaction_indexes=[1, 2, 3])
    with pytest.raises(vrwkv.InputError, match="num_classes"):
        vrwkv.create_model("upernet_vrwkv_t", num_classes=3)
    seg = vrwkv.load(checkpoint, threads=1, **options)
    with pytest.raises(vrwkv.InputError, match="mode"):
        seg(g["input"], mode="tiles")
    with pytest.raises(vrwkv.InputError, match="crop"):
        seg(g["input"], mode="slide", crop=(40, 40))
    with pytest.raises(vrwkv.InputError, match="channels"):
        seg(np.zeros((1, 4, 96, 128), np.float32), mode="whole")
    with pytest.raises(vrwkv.InputError, match="image"):
        seg.segment(np.zeros((8, 8), np.uint8))
    with pytest.raises(vrwkv.InputError, match="missing.jpg"):
        seg.segment("missing.jpg")
    det = vrwkv.load(os.path.join(GOLDEN, "det_e2e", "det_e2e_s1_72x100_r96x133.pth"), threads=1)
    x = np.zeros((1, 3, 96, 160), np.float32)
    with pytest.raises(vrwkv.InputError, match="meta"):
        det.detect(x)
    with pytest.raises(vrwkv.InputError, match="pad_shape"):
        det.detect(x, meta={"ori_shape": (72, 100), "img_shape": (96, 133), "pad_shape": (128, 160),
                            "scale_factor": (1.33, 1.33, 1.33, 1.33)})
    with pytest.raises(vrwkv.InputError, match="score_thr"):
        det.detect(x, score_thr=0.01, meta={})
