"""The package's API: zero-copy inputs, outputs, options, errors, threads, preprocessing, presets."""
import os
import threading

import numpy as np
import pytest

import vrwkv
from conftest import FORWARD_TOL, GOLDEN, golden_case, max_error, read_safetensors, require_golden


def tiny():
    require_golden()
    _, g, checkpoint, options = golden_case("tiny_default")
    return vrwkv.load(checkpoint, threads=1, **options), g


def test_a_contiguous_float32_array_reaches_the_engine_without_a_copy():
    x = np.zeros((2, 3, 32, 32), np.float32)
    assert vrwkv._vrwkv._engine_address(x) == x.ctypes.data
    # Another dtype or layout is converted (once): the engine sees other memory than the (live) array's.
    x64 = x.astype(np.float64)
    assert vrwkv._vrwkv._engine_address(x64) != x64.ctypes.data
    f = np.asfortranarray(np.zeros((2, 3, 32, 32), np.float32))
    assert vrwkv._vrwkv._engine_address(f) != f.ctypes.data
    strided = np.zeros((2, 3, 32, 64), np.float32)[..., ::2]
    assert vrwkv._vrwkv._engine_address(strided) != strided.ctypes.data


def test_converted_inputs_give_the_same_outputs():
    model, g = tiny()
    x = np.ascontiguousarray(g["input"], dtype=np.float32)
    want = model(x)
    assert max_error(model(x.astype(np.float64)), want) == 0
    assert max_error(model(np.asfortranarray(x)), want) == 0
    assert max_error(model(x.tolist()), want) == 0
    assert max_error(want, g["logits"]) <= FORWARD_TOL


def test_parameters_are_read_only_and_outlive_the_model():
    model, g = tiny()
    params = model.parameters()
    del model
    fresh = tiny()[0].parameters()
    assert set(params) == set(fresh)
    for name, p in params.items():
        assert not p.flags.writeable
        assert np.array_equal(p, fresh[name]), name
    with pytest.raises(ValueError):
        next(iter(params.values()))[...] = 0


def test_features_only_and_feature_info():
    require_golden()
    _, g, checkpoint, options = golden_case("tiny_outidx01_nofinalnorm")
    model = vrwkv.load(checkpoint, features_only=True, **options)
    maps = model(g["input"])
    assert [m.shape for m in maps] == [(2, 64, 8, 8)] * 2
    assert model.feature_info == [{"num_chs": 64, "reduction": 4, "module": "layers.0"},
                                  {"num_chs": 64, "reduction": 4, "module": "layers.1"}]
    for i, m in enumerate(maps):
        assert max_error(m, g[f"features.{i}"]) <= FORWARD_TOL
    # head="none": the model returns pooled features.
    headless = vrwkv.load(golden_case("tiny_default")[2], head="none", wkv="paper")
    assert headless.num_classes == 0 and headless(g["input"]).shape == (2, 64)


def test_bad_input_raises_input_error_with_the_engines_message():
    model, _ = tiny()
    with pytest.raises(vrwkv.InputError, match="nonexistent.pth"):
        vrwkv.load("nonexistent.pth")
    with pytest.raises(ValueError, match="4 dimensions"):
        model(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(vrwkv.InputError, match=r"\[1,4,32,32\]"):
        model(np.zeros((1, 4, 32, 32), np.float32))
    with pytest.raises(vrwkv.InputError, match="wkv"):
        vrwkv.load(golden_case("tiny_default")[2], wkv="fast")
    with pytest.raises(vrwkv.InputError, match="unknown model option 'colour'"):
        vrwkv.load(golden_case("tiny_default")[2], colour="red")
    with pytest.raises(vrwkv.InputError, match="labels"):
        model.grad(np.zeros((2, 3, 32, 32), np.float32), [0, 10])
    with pytest.raises(vrwkv.InputError, match="pretrained"):
        vrwkv.create_model("vrwkv_t", pretrained=True)
    with pytest.raises(vrwkv.InputError, match="vrwkv_q"):
        vrwkv.create_model("vrwkv_q")
    checkpoint = golden_case("tiny_default")[2]
    for bad in (dict(threads=True), dict(threads=-1), dict(threads=2 ** 40), dict(out_indices=True),
                dict(dtype="fp16"), dict(wkv=3), dict(wkv_chunks=1.5), dict(pos_grid=(8,))):
        with pytest.raises(vrwkv.InputError):
            vrwkv.load(checkpoint, **bad)
    with pytest.raises(vrwkv.InputError, match="^wkv: expected a string$"):
        vrwkv.load(checkpoint, wkv=3)
    for bad in (dict(num_classes=True), dict(seed=-1), dict(num_classes=2 ** 70)):
        with pytest.raises(vrwkv.InputError):
            vrwkv.create_model("vrwkv_t", **bad)
    assert issubclass(vrwkv.InputError, vrwkv.Error) and issubclass(vrwkv.InputError, ValueError)
    assert issubclass(vrwkv.EngineError, vrwkv.Error) and issubclass(vrwkv.EngineError, RuntimeError)


def test_a_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(vrwkv.InputError, match="bad.safetensors"):
        vrwkv.load(bad)


def test_two_models_run_in_two_threads_with_the_same_results():
    model_a, g = tiny()
    model_b, _ = tiny()
    x = np.ascontiguousarray(g["input"], dtype=np.float32)
    want = model_a(x)
    results = {}

    def work(name, model):
        results[name] = [model(x) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(n, m)) for n, m in (("a", model_a), ("b", model_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == {"a", "b"}  # both threads finished without raising
    for runs in results.values():
        assert all(np.array_equal(r, want) for r in runs)


@pytest.mark.parametrize("image,kind,size", [("rocket.jpg", "mmcls", 224), ("text.png", "mmcls", 224),
                                             ("rocket.jpg", "internimage", 384)])
def test_preprocessing_matches_the_official_pipelines(image, kind, size):
    require_golden()
    model = vrwkv.load(golden_case("vrwkv_t_224_b2")[2], preprocess=kind)
    path = os.path.join(GOLDEN, "preprocess", image)
    want = read_safetensors(os.path.join(GOLDEN, "preprocess", image.split(".")[0] + ".safetensors"))
    got = model.preprocess(path)
    assert got.shape == (1, 3, size, size)
    # The engine's decoders and resampler are bit-exact with the reference (tests/test_image.cpp): 1e-6 for the
    # float32 normalisation.
    assert np.max(np.abs(got - want[kind])) <= 1e-6


@pytest.mark.parametrize("image", ["rocket.jpg", "text.png"])
def test_pil_images_and_pixel_arrays_take_the_same_transform(image):
    require_golden()
    Image = pytest.importorskip("PIL.Image")  # python3-pil, installed by tools/setup.sh
    model = vrwkv.load(golden_case("vrwkv_t_224_b2")[2])
    path = os.path.join(GOLDEN, "preprocess", image)
    # Pillow decodes these two files to the engine's pixels (libjpeg-turbo, libpng; no EXIF orientation).
    want = model.preprocess(path)
    assert np.array_equal(model.preprocess(Image.open(path)), want)
    assert np.array_equal(model.preprocess(np.asarray(Image.open(path).convert("RGB"))), want)
    with pytest.raises(vrwkv.InputError, match="uint8"):
        model.preprocess(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(vrwkv.InputError, match="H×W×3"):
        model.preprocess(np.zeros((8, 8), np.uint8))


def test_classify_and_create_model():
    model = vrwkv.create_model("vrwkv_t", num_classes=7, seed=3, threads=1)
    assert model.num_classes == 7 and "vrwkv_t" in vrwkv.list_models()
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    top = model.classify([image, image], topk=7)
    assert len(top) == 2 and len(top[0]) == 7
    # The same image twice in a batch: the same classes, probabilities equal up to float32 summation order.
    assert [n for n, _ in top[0]] == [n for n, _ in top[1]]
    assert max(abs(a - b) for (_, a), (_, b) in zip(top[0], top[1])) <= 1e-6
    probs = [p for _, p in top[0]]
    assert probs == sorted(probs, reverse=True)
    assert abs(sum(probs) - 1.0) <= 1e-6  # all 7 classes: a softmax (float64) sums to 1
    logits = model(model.preprocess(image))[0].astype(np.float64)
    assert top[0][0][0] == model.class_names[int(np.argmax(logits))]


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    model, g = tiny()
    x = torch.from_numpy(np.array(g["input"], dtype=np.float32))  # a writable copy: the golden's bytes are read-only
    assert max_error(model(x), model(x.numpy())) == 0
    assert max_error(model(x.requires_grad_(True)), model(g["input"])) == 0
