"""vrwkv: Vision-RWKV on NumPy arrays, with the conventions of timm.

    import numpy, vrwkv
    model = vrwkv.load("vrwkv_t_in1k_224.pth", threads=2)
    x = model.preprocess("cat.jpg")            # float32 [1, 3, 224, 224]
    logits = model(x)                          # float32 [1, 1000]
    model.classify(["cat.jpg"], topk=5)        # [[(name, probability), ...]]

    backbone = vrwkv.load("vrwkv_t_in1k_224.pth", features_only=True, out_indices=(3, 7, 11))
    maps = backbone(x)                         # three float32 [1, 192, 14, 14] maps
    backbone.feature_info                      # [{'num_chs': 192, 'reduction': 16, 'module': 'layers.3'}, ...]

Inputs are float32 NCHW arrays, normalised as the model's preprocessing
leaves them. A C-contiguous float32 NumPy array reaches the engine without a
copy, and so does a contiguous float32 CPU tensor of any library with
``__dlpack__`` (PyTorch's); any other array-like (another dtype or layout, a
list) is converted once. Outputs are NumPy
arrays over the engine's memory. The engine releases the GIL while it computes,
so models can run in several Python threads. Errors are ``vrwkv.InputError``
(a ``ValueError``: a file, shape or option the engine cannot take) or
``vrwkv.EngineError`` (a ``RuntimeError``), both ``vrwkv.Error``.
"""

import json as _json
import os as _os
import queue as _queue
import signal as _signal
import threading as _threading

import numpy as _np

from ._vrwkv import EngineError, Error, InputError
from ._vrwkv import Model as _Engine
from ._vrwkv import StopFlag as _StopFlag
from ._vrwkv import Detector as _DetEngine
from ._vrwkv import Segmentor as _SegEngine
from ._vrwkv import ade20k_palette as _ade20k_palette
from ._vrwkv import checkpoint_kind as _checkpoint_kind
from ._vrwkv import detector_preset_names as _detector_preset_names
from ._vrwkv import preset_names as _preset_names
from ._vrwkv import segmentor_preset_names as _segmentor_preset_names
from ._vrwkv import train as _train

__all__ = ["Error", "InputError", "EngineError", "Model", "Segmentor", "Detector", "load", "create_model",
           "list_models", "train", "train_iter"]
__version__ = "0.1.0"

# The model options of the command line, as keywords (`--wkv-chunks 8` is wkv_chunks=8).
_MODEL_OPTIONS = ("wkv", "wkv_chunks", "preprocess", "head", "shift", "wkv_direction", "wkv_decay", "post_norm",
                  "final_norm", "key_norm", "layer_scale", "shift_pixel", "channel_gamma", "out_indices", "pos_grid")


def _integer(value, name, low, high):
    """An int (or NumPy integer, never a bool) in [low, high], else InputError naming it."""
    if isinstance(value, (bool, _np.bool_)) or not isinstance(value, (int, _np.integer)):
        raise InputError(f"{name}: expected an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InputError(f"{name}: expected an integer from {low} to {high}, got {value}")
    return int(value)


def _options(kwargs, out_indices):
    unknown = sorted(set(kwargs) - set(_MODEL_OPTIONS))
    if unknown:
        raise InputError(f"unknown model option '{unknown[0]}' (expected one of {', '.join(_MODEL_OPTIONS)})")
    options = dict(kwargs)
    big = 1 << 62
    for key in ("wkv_chunks", "shift_pixel"):
        if options.get(key) is not None:
            options[key] = _integer(options[key], key, -big, big)  # ranges: the engine's
    if options.get("pos_grid") is not None:
        grid = options["pos_grid"]
        if isinstance(grid, str) or not hasattr(grid, "__len__") or len(grid) != 2:
            raise InputError(f"pos_grid: expected (height, width), got {grid!r}")
        options["pos_grid"] = [_integer(v, "pos_grid", 1, big) for v in grid]
    if out_indices is not None:
        if not isinstance(out_indices, (list, tuple, range, _np.ndarray)):
            out_indices = (out_indices,)
        options["out_indices"] = [_integer(i, "out_indices", -big, big) for i in out_indices]
    return options


def _threads(threads):
    return 0 if threads is None else _integer(threads, "threads", 0, 4096)


# The options of `vrwkv segment` and `vrwkv detect` (the backbone settings a checkpoint's tensors do not tell).
_DENSE_OPTIONS = ("interaction_indexes", "deform_heads", "deform_points", "post_norm", "wkv", "wkv_chunks")


def _dense_options(kwargs):
    unknown = sorted(set(kwargs) - set(_DENSE_OPTIONS))
    if unknown:
        raise InputError(f"unknown option '{unknown[0]}' for a segmentor or detector "
                         f"(expected one of {', '.join(_DENSE_OPTIONS)})")
    options = dict(kwargs)
    big = 1 << 62
    for key in ("deform_heads", "deform_points", "wkv_chunks"):
        if options.get(key) is not None:
            options[key] = _integer(options[key], key, -big, big)
    if options.get("interaction_indexes") is not None:
        ranges = options["interaction_indexes"]
        if isinstance(ranges, str) or not hasattr(ranges, "__len__"):
            raise InputError(f"interaction_indexes: expected (first, last) block ranges, got {ranges!r}")
        pairs = []
        for r in ranges:
            if isinstance(r, str) or not hasattr(r, "__len__") or len(r) != 2:
                raise InputError(f"interaction_indexes: expected (first, last) pairs, got {r!r}")
            pairs.append([_integer(i, "interaction_indexes", -big, big) for i in r])
        options["interaction_indexes"] = pairs
    return options


def load(path, *, threads=None, dtype="fp32", features_only=False, out_indices=None, **options):
    """A model from a checkpoint: an official ``.pth`` (any layout) or a vrwkv ``.safetensors``.

    threads: worker threads (default: every core). dtype: "fp32", or "bf16" (bfloat16 products, float32 sums: a
    classifier's block linears, a segmentor's head convolutions, a detector's convolutions and block linears).
    features_only: calling the model returns the feature maps at ``out_indices`` (block
    indices, negative from the end; default the last block). Further keywords are the model options of the
    command line: wkv ("paper" | "official"), wkv_chunks, preprocess ("mmcls" | "internimage" | "resize"),
    head ("none" | "linear" | "mlp"), shift ("q" | "1d" | "none"), wkv_direction ("bi" | "uni"), wkv_decay
    ("vrwkv" | "rwkv4"), post_norm, final_norm, key_norm, layer_scale (bools), shift_pixel, channel_gamma,
    pos_grid ((h, w)).
    """
    if not isinstance(path, (str, _os.PathLike)):
        raise InputError(f"path: expected a file name, got {type(path).__name__}")
    path = _os.fspath(path)
    kind = _checkpoint_kind(path)
    if kind != "classifier":
        if features_only or out_indices is not None:
            raise InputError(f"{path}: a {kind}; features_only and out_indices are options of classifiers")
        engine = (_SegEngine if kind == "segmentor" else _DetEngine).load(path, _dense_options(options),
                                                                          _threads(threads), dtype)
        return Segmentor(engine) if kind == "segmentor" else Detector(engine)
    engine = _Engine.load(path, _options(options, out_indices), _threads(threads), dtype)
    return Model(engine, features_only)


def create_model(name, pretrained=False, *, num_classes=None, seed=0, threads=None, dtype="fp32",
                 features_only=False, out_indices=None, **options):
    """A preset ("vrwkv_t", "vrwkv_s", "vrwkv_b", "vrwkv_l", "vrwkv6_t", ...) with the official initialisation.

    No weights are bundled: with pretrained=True this raises InputError; use load(path) on a checkpoint.
    num_classes: classes of the head (0: no head). seed: the initialisation's.
    """
    if pretrained:
        raise InputError(f"{name}: no pretrained weights are bundled; load a checkpoint with vrwkv.load(path)")
    if name in _segmentor_preset_names() or name in _detector_preset_names():
        if num_classes is not None or features_only or out_indices is not None or options:
            raise InputError(f"{name}: the official configuration is fixed (150 ADE20K or 80 COCO classes); "
                             "num_classes, features_only, out_indices and model options are for classifiers")
        seed = _integer(seed, "seed", 0, (1 << 64) - 1)
        if name in _segmentor_preset_names():
            return Segmentor(_SegEngine.create(name, seed, _threads(threads), dtype))
        return Detector(_DetEngine.create(name, seed, _threads(threads), dtype))
    if num_classes is not None:
        num_classes = _integer(num_classes, "num_classes", 0, 1 << 20)
    seed = _integer(seed, "seed", 0, (1 << 64) - 1)
    engine = _Engine.create(name, num_classes, seed, _options(options, out_indices), _threads(threads), dtype)
    return Model(engine, features_only)


def list_models():
    """The preset names create_model knows: classifiers, then segmentors and detectors."""
    return list(_preset_names()) + list(_segmentor_preset_names()) + list(_detector_preset_names())


def _as_input(x):
    """x as something the engine takes: ndarrays as they are, __dlpack__ objects through NumPy without a copy."""
    if isinstance(x, _np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):
        try:
            return _np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError):
            # e.g. a tensor that requires grad or lives on another device: one copy through __array__
            if hasattr(x, "detach"):
                x = x.detach().cpu()
            return _np.asarray(x)
    return x


class _Engined:
    """What every model object has: its engine's parameter count, threads and FLOPs."""

    @property
    def parameter_count(self):
        return self._engine.parameter_count

    @property
    def threads(self):
        return self._engine.threads

    def flops(self, height, width):
        """FLOPs of one image of height × width by the official counting convention (detectors: with 1000
        proposals and 100 detections)."""
        return self._engine.flops(_integer(height, "height", 1, 1 << 20), _integer(width, "width", 1, 1 << 20))


class Model(_Engined):
    """A loaded model. Calling it runs the whole model on float32 [B, Cin, H, W]."""

    def __init__(self, engine, features_only=False):
        self._engine = engine
        self.features_only = bool(features_only)
        # The architecture and run settings, as the safetensors metadata "vrwkv.config" holds them.
        self.config = _json.loads(engine.config_json)
        c = self.config
        self._has_head = c["head"] != "none"
        self.num_classes = int(c["num_classes"]) if self._has_head else 0
        self.num_features = self.embed_dim = int(c["embed_dims"])
        self.class_names = list(engine.class_names) if self._has_head else []
        self.pretrained_cfg = {"input_size": (int(c["in_channels"]), *engine.input_size()),
                               "preprocess": c["preprocess"]}
        self.feature_info = [{"num_chs": self.num_features, "reduction": int(c["patch_size"]), "module": f"layers.{i}"}
                             for i in c["out_indices"]]

    def __repr__(self):
        c = self.config
        return (f"vrwkv.Model({c['block']}, {c['depth']} blocks of width {c['embed_dims']}, "
                f"{self.num_classes} classes, {self.parameter_count:,} parameters)")

    def parameters(self):
        """Every parameter under its official name, as read-only arrays over the model's weights."""
        return self._engine.parameters()

    def forward(self, x):
        """Logits [B, K] (the pooled features [B, C] without a head; the feature maps if features_only)."""
        features, pooled, logits = self._engine.forward(_as_input(x))
        if self.features_only:
            return features
        return logits if logits is not None else pooled

    __call__ = forward

    def forward_features(self, x):
        """The feature map of the last out index, float32 [B, C, h, w] (through the final norm when that index is
        the last block and the model has one)."""
        return self._engine.forward(_as_input(x))[0][-1]

    def forward_intermediates(self, x):
        """The feature maps at out_indices, a list of float32 [B, C, h, w]."""
        return self._engine.forward(_as_input(x))[0]

    def forward_head(self, x, pre_logits=False):
        """The classifier on pooled features [B, C] (or on a feature map [B, C, h, w], pooled first)."""
        x = _as_input(x)
        x = _np.asarray(x, dtype=_np.float32) if not isinstance(x, _np.ndarray) else x
        if x.ndim == 4:
            x = x.mean(axis=(2, 3), dtype=_np.float64).astype(_np.float32)
        return x if pre_logits else self._engine.head(x)

    def preprocess(self, image):
        """The model's own preprocessing of a path, a PIL.Image or an H×W×3 uint8 RGB array: float32 [1, Cin, H, W].

        A list of paths gives one batch [N, Cin, H, W]. Paths are decoded by the engine (as `vrwkv classify` does);
        a PIL image is converted to RGB by Pillow first.
        """
        if isinstance(image, (str, _os.PathLike)):
            return self._engine.preprocess_files([_os.fspath(image)])
        if isinstance(image, (list, tuple)) and image and all(isinstance(p, (str, _os.PathLike)) for p in image):
            return self._engine.preprocess_files([_os.fspath(p) for p in image])
        if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
            image = _np.asarray(image.convert("RGB"))
        if isinstance(image, _np.ndarray):
            return self._engine.preprocess_pixels(_np.ascontiguousarray(image))
        raise InputError(f"image: expected a path, a PIL.Image or an H×W×3 uint8 array, got {type(image).__name__}")

    def classify(self, images, topk=5, batch_size=8):
        """Top-k (class name, probability) for each image (paths, PIL images or arrays)."""
        if not self._has_head:
            raise InputError("classify: the model has no classification head")
        if isinstance(images, (str, _os.PathLike)) or not isinstance(images, (list, tuple)):
            images = [images]
        k = min(_integer(topk, "topk", 1, 1 << 30), self.num_classes)
        batch_size = _integer(batch_size, "batch_size", 1, 4096)
        results = []
        for start in range(0, len(images), batch_size):
            x = _np.concatenate([self.preprocess(i) for i in images[start:start + batch_size]])
            logits = self._engine.forward(x)[2].astype(_np.float64)
            p = _np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            for row in p:
                top = _np.argsort(-row, kind="stable")[:k]
                results.append([(self.class_names[c], float(row[c])) for c in top])
        return results

    def grad(self, x, labels, label_smoothing=0.1):
        """(loss, {parameter name: dL/dθ}) of the label-smoothed cross-entropy (mmcls's) on a batch.

        labels: integer classes [B]. The gradients are exact (the engine's backward); the arrays are fresh.
        """
        labels = _np.asarray(labels)
        if labels.dtype.kind not in "iu":
            raise InputError(f"labels: expected integer class indices, got dtype {labels.dtype}")
        loss, grads, _ = self._engine.grad(_as_input(x), labels, float(label_smoothing))
        return loss, grads


def _rgb(image):
    """A PIL.Image or an H×W×3 uint8 array as a C-contiguous uint8 RGB array (paths are left to the engine)."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        image = _np.asarray(image.convert("RGB"))
    if isinstance(image, _np.ndarray):
        return _np.ascontiguousarray(image)
    raise InputError(f"image: expected a path, a PIL.Image or an H×W×3 uint8 array, got {type(image).__name__}")


class _DenseModel(_Engined):
    """What segmentors and detectors share: run settings, counts, and their pipeline's input of an image."""

    def __init__(self, engine):
        self._engine = engine
        self.config = {"backbone": _json.loads(engine.backbone_json), **_json.loads(engine.settings_json)}
        self.num_classes = int(engine.num_classes)
        self.class_names = list(engine.class_names)

    def __repr__(self):
        return (f"vrwkv.{type(self).__name__}({self.config['backbone']['depth']} blocks of width "
                f"{self.config['backbone']['embed_dims']}, {self.num_classes} classes, "
                f"{self.parameter_count:,} parameters)")

    def _preprocess(self, image):
        """The engine's pipeline on a path (decoded by the engine) or on pixels (PIL.Image or uint8 array)."""
        if isinstance(image, (str, _os.PathLike)):
            return self._engine.preprocess_file(_os.fspath(image))
        return self._engine.preprocess_pixels(_rgb(image))


class Segmentor(_DenseModel):
    """An official segmentor (VRWKV-Adapter + UPerHead, mmseg): vrwkv.load("upernet_...pth") or
    vrwkv.create_model("upernet_vrwkv_t").

        seg = vrwkv.load("upernet_vrwkv_adapter_tiny_512_160k_ade20k.pth")
        labels = seg.segment("room.jpg")            # uint8 [H, W] class indices at the photo's size
        seg.class_names[labels[0, 0]]               # 'wall', ...
        logits = seg(seg.preprocess("room.jpg"))    # float32 [1, K, h, w] at the input's size
    """

    def __init__(self, engine):
        super().__init__(engine)
        self.config["test_mode"] = engine.test_mode
        palette = _ade20k_palette()
        self.palette = palette[_np.arange(self.num_classes) % len(palette)]  # uint8 [K, 3], ADE20K's colours

    def preprocess(self, image):
        """The ADE20K test pipeline (keep-ratio resize to (2048, 512), multiple of 32, normalise; OpenCV's resizes as
        the official code) of a path, a PIL.Image or an H×W×3 uint8 RGB array: float32 [1, 3, H, W]."""
        return self._preprocess(image)[0]

    def infer(self, x, *, mode=None, crop=None, stride=None, flip=False, out_size=None):
        """mmseg's inference on float32 [B, 3, H, W]: logits [B, K, Ho, Wo] (with flip: the log of the averaged
        softmax). mode: "whole" or "slide" (default: the checkpoint's test_cfg, ADE20K's slide 512/341); crop and
        stride: (h, w) of slide inference; out_size: (h, w) to rescale to (default the input's)."""
        pairs = {}
        for name, value in (("crop", crop), ("stride", stride), ("out_size", out_size)):
            if value is not None:
                if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
                    raise InputError(f"{name}: expected (height, width), got {value!r}")
                pairs[name] = tuple(_integer(v, name, 1, 65535) for v in value)
        if mode is not None and not isinstance(mode, str):
            raise InputError(f"mode: expected 'whole' or 'slide', got {mode!r}")
        return self._engine.infer(_as_input(x), mode or "", pairs.get("crop"), pairs.get("stride"), bool(flip),
                                  pairs.get("out_size"))

    __call__ = infer

    def segment(self, image, **options):
        """Class indices of each pixel of a photo (path, PIL.Image or H×W×3 uint8 array) at its own size, as
        `vrwkv segment` writes them: uint8 [H, W] (int64 beyond 256 classes). options: those of infer()."""
        x, original = self._preprocess(image)
        logits = self.infer(x, out_size=original.shape[:2], **options)
        labels = logits[0].argmax(axis=0)
        return labels.astype(_np.uint8) if self.num_classes <= 256 else labels


class Detector(_DenseModel):
    """An official Mask R-CNN detector (VRWKV-Adapter, FPN, RPN, RoI heads, mmdet): vrwkv.load("mask_rcnn_...pth")
    or vrwkv.create_model("mask_rcnn_vrwkv_t").

        det = vrwkv.load("mask_rcnn_vrwkv_adapter_tiny_fpn_1x_coco.pth")
        d = det.detect("street.jpg", score_thr=0.3)
        d["boxes"], d["scores"], d["labels"], d["masks"]   # [N,4] x1,y1,x2,y2 in the photo's pixels, [N], [N], [N,H,W]
        [det.class_names[k] for k in d["labels"]]         # 'person', 'car', ...
    """

    def __init__(self, engine):
        super().__init__(engine)
        self.score_thr = float(engine.score_thr)  # the test_cfg's (0.05): detections below it never exist

    def preprocess(self, image):
        """The COCO test pipeline (keep-ratio resize to (1333, 800) with OpenCV, normalise, pad to a multiple of
        32): (float32 [1, 3, H, W], meta) where meta has ori_shape, img_shape, pad_shape and scale_factor."""
        x, meta, _ = self._preprocess(image)
        return x, meta

    def detect(self, image, *, score_thr=None, masks=True, meta=None):
        """Detections by descending score: {"boxes": float32 [N, 4] (x1, y1, x2, y2 in the photo's pixels),
        "scores": [N], "labels": int64 [N] (0-based; class_names[k]), "masks": uint8 [N, H, W] (0/1) or None,
        "proposals": the RPN's count}. image: a path, a PIL.Image, an H×W×3 uint8 array, or a preprocessed
        float32 [1, 3, H, W] input with its meta. score_thr: keep scores ≥ it (at least the model's 0.05; the
        same detections as a test_cfg with that threshold, since NMS only suppresses lower scores)."""
        if score_thr is not None:
            if isinstance(score_thr, bool) or not isinstance(score_thr, (int, float, _np.floating)) \
                    or not self.score_thr <= float(score_thr) <= 1:
                raise InputError(f"score_thr: expected a number from the model's {self.score_thr:g} to 1, got "
                                 f"{score_thr!r}")
        if meta is None:
            if isinstance(image, _np.ndarray) and image.dtype == _np.float32 and image.ndim == 4:
                raise InputError("meta: a preprocessed input needs its meta (from preprocess())")
            x, meta, _ = self._preprocess(image)
        else:
            if not isinstance(meta, dict):
                raise InputError(f"meta: expected the dict preprocess() returns, got {type(meta).__name__}")
            x = _as_input(image)
        d = self._engine.detect(x, meta, bool(masks))
        if score_thr is not None:
            keep = d["scores"] >= _np.float32(score_thr)
            for key in ("boxes", "scores", "labels", "masks"):
                if d[key] is not None:
                    d[key] = d[key][keep]
        return d


def _train_arguments(config, out_dir, resume, force, threads, progress, stop_after):
    """The engine's train arguments after the checks `vrwkv train` makes on its flags."""
    if not isinstance(out_dir, (str, _os.PathLike)):
        raise InputError(f"out_dir: expected a directory name, got {type(out_dir).__name__}")
    for name, value in (("resume", resume), ("force", force), ("progress", progress)):
        if not isinstance(value, (bool, _np.bool_)):
            raise InputError(f"{name}: expected True or False, got {value!r}")
    if resume:
        if config is not None:
            raise InputError("config: give None with resume=True (the checkpoint's configuration is used)")
        text, source = "", ""
    elif isinstance(config, dict):
        try:
            text = _json.dumps(config)
        except (TypeError, ValueError) as e:
            raise InputError(f"config: not expressible as JSON ({e})") from None
        source = "config"
    elif isinstance(config, (str, _os.PathLike)):
        source = _os.fspath(config)
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{source}: cannot read the training configuration ({e})") from None
    else:
        raise InputError("config: expected a dict, a path to a configuration (configs/*.json), or None with "
                         f"resume=True; got {type(config).__name__}")
    steps = 0 if stop_after is None else _integer(stop_after, "stop_after", 1, (1 << 62))
    return text, source, _os.fspath(out_dir), bool(resume), bool(force), _threads(threads), bool(progress), steps


def _sigint_is_python_default():
    """Whether Ctrl-C would raise KeyboardInterrupt here (the main thread, Python's own handler)."""
    return (_threading.current_thread() is _threading.main_thread()
            and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler)


def train(config, out_dir, *, callback=None, resume=False, force=False, threads=None, progress=True,
          stop_after=None):
    """Trains a model as `vrwkv train` does; returns the final evaluation {top1, top5, loss, images} (or None).

    config: a dict in the form of configs/*.json, or the path of such a file (None with resume=True: the
    checkpoint's own configuration). out_dir receives checkpoint.safetensors, metrics.jsonl and, at the end,
    model.safetensors. callback(record) is called with every metrics record as a dict (step records: step, epoch,
    loss, lr, grad_norm, images_per_second; evaluation records: step, epoch, val_top1, val_top5, val_loss).
    An exception raised by the callback, and Ctrl-C, stop the run after the current step with a checkpoint and
    are raised again here; train(None, out_dir, resume=True) continues bit for bit (same thread count).
    stop_after: stop (with a checkpoint) after this many steps in total.
    """
    args = _train_arguments(config, out_dir, resume, force, threads, progress, stop_after)
    if callback is not None and not callable(callback):
        raise InputError(f"callback: expected a callable, got {type(callback).__name__}")
    on_record = None if callback is None else (lambda line: callback(_json.loads(line)))
    return _train(*args, on_record, _StopFlag(), _sigint_is_python_default())


def train_iter(config, out_dir, *, resume=False, force=False, threads=None, progress=True, stop_after=None):
    """train() as an iterator over its metrics records (dicts, as train's callback receives them).

    Training runs in a background thread while the loop body runs. Leaving the loop early (break, an exception,
    Ctrl-C) stops the run after its current step with a checkpoint (resume=True continues it): at once inside
    `with vrwkv.train_iter(...) as records:`, else when the iterator is collected (or on close()). An error of the
    run itself is raised from the iteration; afterwards `.result` holds the final evaluation.
    """
    args = _train_arguments(config, out_dir, resume, force, threads, progress, stop_after)
    return _TrainIter(args)


class _TrainIter:
    """The iterator of train_iter: training starts at the first next()."""

    _END = object()

    def __init__(self, args):
        self._args = args
        self._records = _queue.Queue()
        self._stop = _StopFlag()
        self._thread = None
        self._error = None
        self.result = None  # the final evaluation, once the iteration has ended

    def __iter__(self):
        return self

    def _work(self):
        try:
            self.result = _train(*self._args, lambda line: self._records.put(_json.loads(line)), self._stop, False)
        except BaseException as e:  # handed to the consumer
            self._error = e
        finally:
            self._records.put(self._END)

    def __next__(self):
        if self._thread is None:
            self._thread = _threading.Thread(target=self._work, name="vrwkv.train", daemon=True)
            self._thread.start()
        try:
            record = self._records.get()
        except BaseException:  # Ctrl-C while waiting: stop with a checkpoint
            self.close()
            raise
        if record is self._END:
            self._thread.join()
            self._records.put(self._END)  # later next() calls end too
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration
        return record

    def close(self):
        """Stops the run after its current step, with a checkpoint, and waits for it."""
        if self._thread is not None and self._thread.is_alive():
            self._stop.request()
            self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()
