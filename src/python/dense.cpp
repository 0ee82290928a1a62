// vrwkv._vrwkv's dense models: the official segmentors (VRWKV-Adapter +
// UPerHead) and detectors (Mask R-CNN), with their test pipelines. As for
// the classifiers (module.cpp): float32 inputs without a copy, outputs as
// arrays over the engine's tensors, the GIL released while the engine runs.
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "arrays.hpp"
#include "vrwkv/adapter.hpp"
#include "vrwkv/config.hpp"
#include "vrwkv/det_input.hpp"
#include "vrwkv/detector.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/seg_input.hpp"
#include "vrwkv/segmentor.hpp"

namespace vrwkv::python {
namespace {

// The dense models' options given as keywords: the CLI's flags of segment and detect.
AdapterOverrides dense_overrides_from(const py::dict& options) {
  AdapterOverrides o;
  const auto integer = integer_arg;
  for (const auto& [k, v] : options) {
    const std::string key = k.cast<std::string>();
    const char* name = key.c_str();
    if (v.is_none()) continue;
    if (key == "post_norm") {
      if (!py::isinstance<py::bool_>(v)) input_error(name, ": expected True or False");
      o.post_norm = v.cast<bool>();
    } else if (key == "interaction_indexes") {
      if (!py::isinstance<py::sequence>(v) || py::isinstance<py::str>(v))
        input_error(name, ": expected a sequence of (first, last) block ranges, e.g. [(0, 2), (3, 5), (6, 8), (9, 11)]");
      std::vector<BlockRange> ranges;
      for (const auto& r : v.cast<py::sequence>()) {
        if (!py::isinstance<py::sequence>(r) || py::isinstance<py::str>(r) || py::len(r) != 2)
          input_error(name, ": expected (first, last) pairs of block indices");
        const auto pair = r.cast<py::sequence>();
        ranges.push_back({integer(pair[0], name), integer(pair[1], name)});
      }
      o.interactions = ranges;
    } else if (key == "deform_heads") o.deform_heads = integer(v, name);
    else if (key == "deform_points") o.deform_points = integer(v, name);
    else if (key == "wkv") {
      if (!py::isinstance<py::str>(v)) input_error(name, ": expected a string");
      try {
        o.wkv = wkv_from_string(v.cast<std::string>());
      } catch (const Error& e) {
        input_error(name, ": ", e.what());
      }
    } else if (key == "wkv_chunks") {
      const std::int64_t c = integer(v, name);
      if (c < 1 || c > 1 << 20) input_error(name, ": expected a chunk count from 1 to 1048576, got ", c);
      o.wkv_chunks = static_cast<int>(c);
    } else input_error("unknown option '", key, "' for a segmentor or detector (expected interaction_indexes, ",
                       "deform_heads, deform_points, post_norm, wkv or wkv_chunks)");
  }
  return o;
}

// An H×W×3 uint8 RGB array's pixels (the dense pipelines take them by value).
std::pair<std::vector<std::uint8_t>, std::pair<std::int64_t, std::int64_t>> rgb_pixels(const py::handle& image) {
  if (!py::isinstance<py::array>(image) || !py::array::ensure(image).dtype().is(py::dtype::of<std::uint8_t>()))
    input_error("image: expected an H×W×3 uint8 array (RGB)");
  const auto a = py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>::ensure(image);
  if (!a || a.ndim() != 3 || a.shape(2) != 3) {
    PyErr_Clear();
    input_error("image: expected an H×W×3 uint8 array (RGB)");
  }
  if (a.shape(0) < 1 || a.shape(1) < 1 || a.shape(0) > 65535 || a.shape(1) > 65535)
    input_error("image: ", a.shape(1), "x", a.shape(0), " pixels; expected 1 to 65535 pixels a side");
  return {std::vector<std::uint8_t>(a.data(), a.data() + a.size()), {a.shape(0), a.shape(1)}};
}

std::vector<std::string> class_names_or_indices(const std::vector<std::string>& labels, std::int64_t k,
                                                const std::vector<std::string>& official, std::int64_t official_k) {
  if (!labels.empty()) return labels;
  if (k == official_k) return official;
  std::vector<std::string> out;
  for (std::int64_t i = 0; i < k; ++i) out.push_back("class " + std::to_string(i));
  return out;
}

py::object pixels_array(const std::vector<std::uint8_t>& rgb, std::int64_t h, std::int64_t w) {
  Tensor t(DType::U8, {h, w, 3});
  std::copy(rgb.begin(), rgb.end(), t.data<std::uint8_t>());
  return to_array(t);
}

class PySegmentor {
 public:
  PySegmentor(Segmentor seg, int threads, bool bf16) : seg_(std::move(seg)), ctx_{threads}, bf16_(bf16) {}

  static PySegmentor load(const std::string& path, const py::dict& options, int threads, const std::string& dtype) {
    const int t = checked_threads(threads);
    const bool bf16 = checked_dtype(dtype);
    return PySegmentor(Segmentor::load(path, dense_overrides_from(options)), t, bf16);
  }
  static PySegmentor create(const std::string& preset, std::uint64_t seed, int threads, const std::string& dtype) {
    const int t = checked_threads(threads);
    const bool bf16 = checked_dtype(dtype);
    return PySegmentor(Segmentor::preset(preset, seed), t, bf16);
  }

  // mmseg inference on F32 [B,3,H,W]: mode "" is the checkpoint's test_cfg.
  py::object infer(const py::handle& x, const std::string& mode, std::optional<std::pair<std::int64_t, std::int64_t>> crop,
                   std::optional<std::pair<std::int64_t, std::int64_t>> stride, bool flip,
                   std::optional<std::pair<std::int64_t, std::int64_t>> out_size) const {
    const Tensor input = as_tensor(x, 4, "input");
    SegmentOptions o = seg_.config().test;
    if (mode == "whole") o.mode = SegmentOptions::Mode::Whole;
    else if (mode == "slide") o.mode = SegmentOptions::Mode::Slide;
    else if (!mode.empty()) input_error("mode: expected 'whole' or 'slide', got '", mode, "'");
    const auto positive = [](std::pair<std::int64_t, std::int64_t> p, const char* what) {
      if (p.first < 1 || p.second < 1 || p.first > 65535 || p.second > 65535)
        input_error(what, ": expected (height, width) from 1 to 65535, got (", p.first, ", ", p.second, ")");
      return p;
    };
    if (crop) std::tie(o.crop_h, o.crop_w) = positive(*crop, "crop");
    if (stride) std::tie(o.stride_h, o.stride_w) = positive(*stride, "stride");
    if (o.mode == SegmentOptions::Mode::Slide && (o.crop_h % 32 || o.crop_w % 32))
      input_error("crop: ", o.crop_h, "x", o.crop_w, " is not a multiple of 32 (the backbone's requirement)");
    if (out_size) std::tie(o.out_h, o.out_w) = positive(*out_size, "out_size");
    o.flip = flip, o.bf16 = bf16_;
    if (input.dim(1) != 3) input_error("input: expected 3 channels, got ", input.dim(1));
    Tensor logits;
    {
      py::gil_scoped_release nogil;
      logits = seg_.infer(input, o, ctx_);
    }
    return to_array(logits);
  }

  // The ADE20K test pipeline: (input F32 [1,3,H,W], original RGB pixels).
  py::tuple preprocess_file(const std::string& path) const {
    SegImage img;
    {
      py::gil_scoped_release nogil;
      img = load_seg_image(path);
    }
    return py::make_tuple(to_array(img.input), pixels_array(img.original, img.ori_h, img.ori_w));
  }
  py::tuple preprocess_pixels(const py::handle& image) const {
    auto [rgb, hw] = rgb_pixels(image);
    SegImage img;
    {
      py::gil_scoped_release nogil;
      img = preprocess_seg_image(std::move(rgb), hw.first, hw.second);
    }
    return py::make_tuple(to_array(img.input), pixels_array(img.original, img.ori_h, img.ori_w));
  }

  const Segmentor& segmentor() const { return seg_; }
  int threads() const { return ctx_.resolved_threads(); }
  std::vector<std::string> class_names() const {
    return class_names_or_indices(seg_.config().labels, seg_.config().head.num_classes, ade20k_classes(), 150);
  }

 private:
  Segmentor seg_;
  Context ctx_;
  bool bf16_;
};

py::dict meta_dict(const ImageMeta& m) {
  py::dict d;
  d["ori_shape"] = py::make_tuple(m.ori_h, m.ori_w);
  d["img_shape"] = py::make_tuple(m.img_h, m.img_w);
  d["pad_shape"] = py::make_tuple(m.pad_h, m.pad_w);
  d["scale_factor"] = py::make_tuple(m.scale_factor[0], m.scale_factor[1], m.scale_factor[2], m.scale_factor[3]);
  return d;
}

ImageMeta meta_from(const py::dict& d, const Tensor& input) {
  ImageMeta m;
  const auto pair = [&](const char* key) -> std::pair<std::int64_t, std::int64_t> {
    if (!d.contains(key)) input_error("meta: no '", key, "' (expected ori_shape, img_shape, pad_shape, scale_factor)");
    try {
      return d[key].cast<std::pair<std::int64_t, std::int64_t>>();
    } catch (const py::cast_error&) {
      input_error("meta['", key, "']: expected (height, width)");
    }
  };
  std::tie(m.ori_h, m.ori_w) = pair("ori_shape");
  std::tie(m.img_h, m.img_w) = pair("img_shape");
  std::tie(m.pad_h, m.pad_w) = pair("pad_shape");
  if (!d.contains("scale_factor")) input_error("meta: no 'scale_factor'");
  try {
    const auto s = d["scale_factor"].cast<std::vector<float>>();
    if (s.size() != 4) throw py::cast_error();
    for (int k = 0; k < 4; ++k) m.scale_factor[k] = s[k];
  } catch (const py::cast_error&) {
    input_error("meta['scale_factor']: expected (w, h, w, h)");
  }
  if (m.ori_h < 1 || m.ori_w < 1 || m.img_h < 1 || m.img_w < 1 || m.img_h > m.pad_h || m.img_w > m.pad_w)
    input_error("meta: expected positive shapes with img_shape inside pad_shape");
  if (m.pad_h != input.dim(2) || m.pad_w != input.dim(3))
    input_error("meta: pad_shape (", m.pad_h, ", ", m.pad_w, ") is not the input's ", input.dim(2), "x", input.dim(3));
  return m;
}

class PyDetector {
 public:
  PyDetector(Detector det, int threads, bool bf16) : det_(std::move(det)), ctx_{threads}, bf16_(bf16) {}

  static PyDetector load(const std::string& path, const py::dict& options, int threads, const std::string& dtype) {
    const int t = checked_threads(threads);
    const bool bf16 = checked_dtype(dtype);
    return PyDetector(Detector::load(path, dense_overrides_from(options)), t, bf16);
  }
  static PyDetector create(const std::string& preset, std::uint64_t seed, int threads, const std::string& dtype) {
    const int t = checked_threads(threads);
    const bool bf16 = checked_dtype(dtype);
    return PyDetector(Detector::preset(preset, seed), t, bf16);
  }

  // The whole detector on F32 [1,3,pad_h,pad_w] with its meta: {boxes, scores, labels, masks}.
  py::dict detect(const py::handle& x, const py::dict& meta, bool masks) const {
    if (!det_.config().has_backbone)
      input_error("detect: this checkpoint holds only the neck and heads (no backbone); it needs feature maps");
    const Tensor input = as_tensor(x, 4, "input");
    if (input.dim(0) != 1) input_error("input: the detector takes one image at a time, got a batch of ", input.dim(0));
    if (input.dim(1) != 3) input_error("input: expected 3 channels, got ", input.dim(1));
    if (input.dim(2) % 32 || input.dim(3) % 32)
      input_error("input: ", input.dim(2), "x", input.dim(3), " is not padded to a multiple of 32");
    const ImageMeta m = meta_from(meta, input);
    DetectOptions o;
    o.bf16 = bf16_, o.masks = masks;
    Detections d;
    {
      py::gil_scoped_release nogil;
      d = det_.detect(input, m, o, ctx_);
    }
    py::dict out;
    out["boxes"] = d.size() ? to_array(d.bboxes) : to_array(Tensor(DType::F32, {0, 4}));
    out["scores"] = d.size() ? to_array(d.scores) : to_array(Tensor(DType::F32, {0}));
    out["labels"] = d.size() ? to_array(d.labels) : to_array(Tensor(DType::I64, {0}));
    out["masks"] = !masks ? py::none()
                   : d.size() ? to_array(d.masks)
                              : to_array(Tensor(DType::U8, {0, m.ori_h, m.ori_w}));
    out["proposals"] = d.proposals;
    return out;
  }

  // The COCO test pipeline: (input F32 [1,3,pad_h,pad_w], meta, original RGB pixels).
  py::tuple preprocess_file(const std::string& path) const {
    DetImage img;
    {
      py::gil_scoped_release nogil;
      img = load_det_image(path);
    }
    return py::make_tuple(to_array(img.input), meta_dict(img.meta),
                          pixels_array(img.original, img.meta.ori_h, img.meta.ori_w));
  }
  py::tuple preprocess_pixels(const py::handle& image) const {
    auto [rgb, hw] = rgb_pixels(image);
    DetImage img;
    {
      py::gil_scoped_release nogil;
      img = preprocess_det_image(std::move(rgb), hw.first, hw.second);
    }
    return py::make_tuple(to_array(img.input), meta_dict(img.meta),
                          pixels_array(img.original, img.meta.ori_h, img.meta.ori_w));
  }

  const Detector& detector() const { return det_; }
  int threads() const { return ctx_.resolved_threads(); }
  std::vector<std::string> class_names() const {
    return class_names_or_indices(det_.config().labels, det_.config().head.num_classes, coco_classes(), 80);
  }

 private:
  Detector det_;
  Context ctx_;
  bool bf16_;
};

}  // namespace

void add_dense(py::module_& m) {
  m.def("checkpoint_kind", [](const std::string& path) {
    const CheckpointKind k = checkpoint_kind(path);
    return std::string(k == CheckpointKind::Segmentor  ? "segmentor"
                       : k == CheckpointKind::Detector ? "detector"
                                                       : "classifier");
  });
  m.def("segmentor_preset_names", &segmentor_preset_names);
  m.def("detector_preset_names", &detector_preset_names);
  m.def("ade20k_palette", [] {
    Tensor t(DType::U8, {static_cast<std::int64_t>(ade20k_palette().size()), 3});
    for (std::size_t k = 0; k < ade20k_palette().size(); ++k)
      for (int c = 0; c < 3; ++c) t.data<std::uint8_t>()[k * 3 + c] = ade20k_palette()[k][c];
    return to_array(t);
  });

  py::class_<PySegmentor>(m, "Segmentor")
      .def_static("load", &PySegmentor::load, py::arg("path"), py::arg("options"), py::arg("threads"), py::arg("dtype"))
      .def_static("create", &PySegmentor::create, py::arg("preset"), py::arg("seed"), py::arg("threads"),
                  py::arg("dtype"))
      .def("infer", &PySegmentor::infer, py::arg("x"), py::arg("mode"), py::arg("crop"), py::arg("stride"),
           py::arg("flip"), py::arg("out_size"))
      .def("preprocess_file", &PySegmentor::preprocess_file, py::arg("path"))
      .def("preprocess_pixels", &PySegmentor::preprocess_pixels, py::arg("image"))
      .def_property_readonly("class_names", &PySegmentor::class_names)
      .def_property_readonly("num_classes", [](const PySegmentor& s) { return s.segmentor().config().head.num_classes; })
      .def_property_readonly("settings_json",
                             [](const PySegmentor& s) { return segmentor_settings_to_json(s.segmentor().config()); })
      .def_property_readonly("backbone_json",
                             [](const PySegmentor& s) { return config_to_json(s.segmentor().config().backbone); })
      .def_property_readonly("test_mode", [](const PySegmentor& s) {
        return std::string(s.segmentor().config().test.mode == SegmentOptions::Mode::Slide ? "slide" : "whole");
      })
      .def_property_readonly("parameter_count", [](const PySegmentor& s) { return s.segmentor().parameter_count(); })
      .def_property_readonly("threads", &PySegmentor::threads)
      .def("flops", [](const PySegmentor& s, std::int64_t h, std::int64_t w) { return s.segmentor().flops(h, w); });

  py::class_<PyDetector>(m, "Detector")
      .def_static("load", &PyDetector::load, py::arg("path"), py::arg("options"), py::arg("threads"), py::arg("dtype"))
      .def_static("create", &PyDetector::create, py::arg("preset"), py::arg("seed"), py::arg("threads"),
                  py::arg("dtype"))
      .def("detect", &PyDetector::detect, py::arg("x"), py::arg("meta"), py::arg("masks"))
      .def("preprocess_file", &PyDetector::preprocess_file, py::arg("path"))
      .def("preprocess_pixels", &PyDetector::preprocess_pixels, py::arg("image"))
      .def_property_readonly("class_names", &PyDetector::class_names)
      .def_property_readonly("num_classes", [](const PyDetector& d) { return d.detector().config().head.num_classes; })
      .def_property_readonly("settings_json",
                             [](const PyDetector& d) { return detector_settings_to_json(d.detector().config()); })
      .def_property_readonly("backbone_json",
                             [](const PyDetector& d) { return config_to_json(d.detector().config().backbone); })
      .def_property_readonly("score_thr", [](const PyDetector& d) { return d.detector().config().test.score_thr; })
      .def_property_readonly("has_backbone", [](const PyDetector& d) { return d.detector().config().has_backbone; })
      .def_property_readonly("parameter_count", [](const PyDetector& d) { return d.detector().parameter_count(); })
      .def_property_readonly("threads", &PyDetector::threads)
      .def("flops", [](const PyDetector& d, std::int64_t h, std::int64_t w) { return d.detector().flops(h, w); });
}

}  // namespace vrwkv::python
