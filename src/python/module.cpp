// vrwkv._vrwkv: the library's classification models on NumPy arrays. The
// Python-facing API (keywords, timm conventions) is python/vrwkv/__init__.py;
// this file is the thin layer below it:
//   - arrays in: a C-contiguous float32 array is handed to the engine as it is
//     (Tensor::borrow keeps the array alive); anything else is converted once;
//   - arrays out: views of the engine's tensors, which the array keeps alive;
//   - the GIL is released while the engine computes;
//   - vrwkv::Error becomes vrwkv.InputError (a ValueError) or
//     vrwkv.EngineError (a RuntimeError), both vrwkv.Error, with its message;
//   - training (train) runs without the GIL, takes it for each metrics
//     record it hands to Python, and stops with a checkpoint on Ctrl-C, on a
//     StopFlag or when the callback raises.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "vrwkv/backward.hpp"
#include "vrwkv/config.hpp"
#include "vrwkv/context.hpp"
#include "vrwkv/error.hpp"
#include "vrwkv/image.hpp"
#include "vrwkv/labels.hpp"
#include "vrwkv/model.hpp"
#include "vrwkv/presets.hpp"
#include "vrwkv/tensor.hpp"
#include "vrwkv/train.hpp"
#include "arrays.hpp"

namespace py = pybind11;

namespace vrwkv::python {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// The float32 data of any array-like as an engine tensor of `ndim`
// dimensions: the array's own memory when it is a C-contiguous, aligned
// float32 ndarray, otherwise one converted copy. The tensor keeps the
// array alive; its last owner may be released on a thread without the GIL.
Tensor as_tensor(const py::handle& obj, int ndim, const char* what) {
  py::array array;
  // array_t's check: an ndarray of a float32-equivalent dtype, C-contiguous.
  const bool usable = py::isinstance<py::array_t<float, py::array::c_style>>(obj) &&
                      (py::reinterpret_borrow<py::array>(obj).flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_);
  if (usable) array = py::reinterpret_borrow<py::array>(obj);
  else {
    array = FloatArray::ensure(obj);
    if (!array) {
      PyErr_Clear();
      input_error(what, ": expected an array of numbers");
    }
  }
  if (array.ndim() != ndim)
    input_error(what, ": expected ", ndim, " dimensions, got an array of shape ",
                shape_str(Shape(array.shape(), array.shape() + array.ndim())));
  Shape shape(array.shape(), array.shape() + array.ndim());
  auto* keep = new py::object(array);
  std::byte* data = static_cast<std::byte*>(const_cast<void*>(array.data()));
  std::shared_ptr<std::byte[]> buffer(data, [keep](std::byte*) {
    py::gil_scoped_acquire gil;
    delete keep;
  });
  return Tensor::borrow(DType::F32, std::move(shape), std::move(buffer));
}

// An F32 tensor as an array sharing its memory: writable for the engine's
// outputs (no longer used by it), read-only for what the engine still uses
// (the parameters). An empty tensor is None.
py::object to_array(const Tensor& t, bool writable) {
  if (t.shape().empty() && t.numel() == 0) return py::none();
  py::dtype dtype;
  if (t.dtype() == DType::F32) dtype = py::dtype::of<float>();
  else if (t.dtype() == DType::I64) dtype = py::dtype::of<std::int64_t>();
  else if (t.dtype() == DType::U8) dtype = py::dtype::of<std::uint8_t>();
  else runtime_error("internal: output tensor is ", dtype_name(t.dtype()), ", not F32, I64 or U8");
  auto* holder = new Tensor(t);
  py::capsule owner(holder, [](void* p) { delete static_cast<Tensor*>(p); });
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end()), strides(shape.size());
  py::ssize_t stride = static_cast<py::ssize_t>(dtype.itemsize());
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  py::array array(dtype, shape, strides, holder->raw(), owner);
  if (!writable) array.attr("flags").attr("writeable") = false;
  return array;
}

std::int64_t integer_arg(const py::handle& v, const char* key) {
  if (py::isinstance<py::bool_>(v) || !py::isinstance<py::int_>(v)) input_error(key, ": expected an integer");
  try {
    return v.cast<std::int64_t>();
  } catch (const py::cast_error&) {
    input_error(key, ": integer out of range");
  }
}

int checked_threads(int threads) {
  if (threads < 0 || threads > 4096) input_error("threads: expected 0 (every core) to 4096, got ", threads);
  return threads;
}

bool checked_dtype(const std::string& dtype) {
  if (dtype != "fp32" && dtype != "bf16") input_error("dtype: expected 'fp32' or 'bf16', got '", dtype, "'");
  return dtype == "bf16";
}

namespace {

// Model options given as keywords: the CLI's flags, with Python values.
ConfigOverrides overrides_from(const py::dict& options) {
  ConfigOverrides o;
  const auto text = [](const py::handle& v, const char* key) {
    if (!py::isinstance<py::str>(v)) input_error(key, ": expected a string");
    return v.cast<std::string>();
  };
  const auto flag = [](const py::handle& v, const char* key) {
    if (!py::isinstance<py::bool_>(v)) input_error(key, ": expected True or False");
    return v.cast<bool>();
  };
  const auto integer = integer_arg;
  // Errors name the keyword: "wkv: unknown Bi-WKV semantics ...".
  const auto named = [](const char* key, auto parse) {
    try {
      return parse();
    } catch (const Error& e) {
      input_error(key, ": ", e.what());
    }
  };
  for (const auto& [k, v] : options) {
    const std::string key = k.cast<std::string>();
    const char* name = key.c_str();
    if (v.is_none()) continue;
    if (key == "wkv") o.wkv = named(name, [t = text(v, name)] { return wkv_from_string(t); });
    else if (key == "wkv_chunks") {
      const std::int64_t s = integer(v, name);
      if (s < 1 || s > 1 << 20) input_error(name, ": expected a chunk count from 1 to 1048576, got ", s);
      o.wkv_chunks = static_cast<int>(s);
    } else if (key == "preprocess") o.preprocess = named(name, [t = text(v, name)] { return preprocess_from_string(t); });
    else if (key == "head") o.head = named(name, [t = text(v, name)] { return head_from_string(t); });
    else if (key == "shift") o.shift = named(name, [t = text(v, name)] { return shift_from_string(t); });
    else if (key == "wkv_direction")
      o.wkv_direction = named(name, [t = text(v, name)] { return wkv_direction_from_string(t); });
    else if (key == "wkv_decay") o.wkv_decay = named(name, [t = text(v, name)] { return wkv_decay_from_string(t); });
    else if (key == "post_norm") o.post_norm = flag(v, name);
    else if (key == "final_norm") o.final_norm = flag(v, name);
    else if (key == "key_norm") o.key_norm = flag(v, name);
    else if (key == "layer_scale") o.layer_scale = flag(v, name);
    else if (key == "shift_pixel") {
      const std::int64_t p = integer(v, name);
      if (p < 0 || p > 1 << 20) input_error(name, ": expected a distance from 0 to 1048576, got ", p);
      o.shift_pixel = static_cast<int>(p);
    } else if (key == "channel_gamma") {
      if (!py::isinstance<py::float_>(v) && !py::isinstance<py::int_>(v)) input_error(name, ": expected a number");
      o.channel_gamma = v.cast<double>();
    } else if (key == "out_indices") {
      if (!py::isinstance<py::sequence>(v) || py::isinstance<py::str>(v))
        input_error(name, ": expected a sequence of block indices");
      std::vector<std::int64_t> indices;
      for (const auto& i : v.cast<py::sequence>()) indices.push_back(integer(i, name));
      if (indices.empty()) input_error(name, ": expected at least one index");
      o.out_indices = indices;
    } else if (key == "pos_grid") {
      if (!py::isinstance<py::sequence>(v) || py::isinstance<py::str>(v) || py::len(v) != 2)
        input_error(name, ": expected (height, width) of the position embedding's grid");
      const auto s = v.cast<py::sequence>();
      o.pos_grid_h = integer(s[0], name), o.pos_grid_w = integer(s[1], name);
      if (*o.pos_grid_h < 1 || *o.pos_grid_w < 1) input_error(name, ": expected positive sizes");
    } else input_error("unknown model option '", key, "'");
  }
  return o;
}

// One model with how it runs (threads, dtype) and, for grad, its Backprop.
class PyModel {
 public:
  PyModel(Model model, int threads, bool bf16) : model_(std::move(model)), ctx_{threads} { options_.bf16 = bf16; }

  static PyModel load(const std::string& path, const py::dict& options, int threads, const std::string& dtype) {
    const int t = checked_threads(threads);  // every option checked before the file is read
    const bool bf16 = checked_dtype(dtype);
    const ConfigOverrides o = overrides_from(options);
    return PyModel(Model::load(path, o), t, bf16);
  }

  static PyModel create(const std::string& preset, std::optional<std::int64_t> num_classes, std::uint64_t seed,
                        const py::dict& options, int threads, const std::string& dtype) {
    const int t = checked_threads(threads);
    const bool bf16 = checked_dtype(dtype);
    Config config = preset_config(preset);
    if (num_classes) {
      if (*num_classes < 0 || *num_classes > 1 << 20)
        input_error("num_classes: expected 0 (no head) to 1048576 classes, got ", *num_classes);
      if (*num_classes == 0) config.arch.head = HeadKind::None;
      else config.arch.num_classes = *num_classes;
    }
    apply_overrides(config, overrides_from(options), preset);
    const TensorMap params = initial_parameters(config.arch, seed);
    return PyModel(Model::from_state_dict(params, config, preset), t, bf16);
  }

  // The whole model on x F32 [B,Cin,H,W]: (features, pooled, logits or None).
  py::tuple forward(const py::handle& x) const {
    const Tensor input = as_tensor(x, 4, "input");
    Outputs out;
    {
      py::gil_scoped_release nogil;
      out = model_.forward(input, options_, ctx_);
    }
    py::list features;
    for (const Tensor& f : out.features) features.append(to_array(f));
    return py::make_tuple(features, to_array(out.pooled), to_array(out.logits));
  }

  // The classifier on pooled features F32 [B,C].
  py::object head(const py::handle& pooled) const {
    const Tensor in = as_tensor(pooled, 2, "pooled features");
    if (model_.architecture().head == HeadKind::None) input_error("the model has no classification head");
    if (in.dim(1) != model_.architecture().embed_dims)
      input_error("pooled features: expected ", model_.architecture().embed_dims, " channels, got ", in.dim(1));
    Tensor logits;
    {
      py::gil_scoped_release nogil;
      logits = model_.head(in, options_, ctx_);
    }
    return to_array(logits);
  }

  // Loss and gradient of every parameter for a batch and integer labels.
  py::tuple grad(const py::handle& x, const py::handle& labels, double label_smoothing) {
    if (model_.architecture().head == HeadKind::None) input_error("grad: the model has no classification head");
    const Tensor input = as_tensor(x, 4, "input");
    const auto l = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(labels);
    if (!l || l.ndim() != 1) {
      PyErr_Clear();
      input_error("labels: expected a 1-D array of class indices");
    }
    if (l.shape(0) != input.dim(0))
      input_error("labels: ", l.shape(0), " labels for a batch of ", input.dim(0), " images");
    if (!(label_smoothing >= 0 && label_smoothing < 1))
      input_error("label_smoothing: expected a value in [0, 1), got ", label_smoothing);
    const std::int64_t k = model_.architecture().num_classes;
    Tensor label_tensor(DType::I64, {l.shape(0)});
    for (py::ssize_t i = 0; i < l.shape(0); ++i) {
      const std::int64_t c = l.at(i);
      if (c < 0 || c >= k) input_error("labels: class ", c, " is outside 0..", k - 1);
      label_tensor.data<std::int64_t>()[i] = c;
    }
    auto grads = std::make_shared<Gradients>(model_);
    LossResult r;
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(*grad_mutex_);
      if (!backprop_) backprop_ = std::make_shared<Backprop>(model_);
      BackwardOptions bo;
      bo.label_smoothing = label_smoothing;
      r = backprop_->run(input, one_hot(label_tensor, k), *grads, bo, ctx_);
    }
    py::dict named;
    for (const auto& [name, t] : grads->tensors) named[py::str(name)] = to_array(t);
    return py::make_tuple(r.loss, named, to_array(r.logits));
  }

  py::object preprocess_files(const std::vector<std::string>& paths) const {
    if (paths.empty()) input_error("preprocess: no images given");
    Tensor batch;
    {
      py::gil_scoped_release nogil;
      batch = load_images(paths, model_.config());
    }
    return to_array(batch);
  }

  py::object preprocess_pixels(const py::handle& image) const {
    const auto a = py::array_t<std::uint8_t, py::array::c_style>::ensure(image);
    if (!a || !py::isinstance<py::array>(image) || !py::array::ensure(image).dtype().is(py::dtype::of<std::uint8_t>())) {
      PyErr_Clear();
      input_error("image: expected an H×W×3 uint8 array (RGB)");
    }
    if (a.ndim() != 3 || a.shape(2) != 3)
      input_error("image: expected an H×W×3 uint8 array (RGB), got shape ",
                  shape_str(Shape(a.shape(), a.shape() + a.ndim())));
    if (a.shape(0) > 65535 || a.shape(1) > 65535)
      input_error("image: ", a.shape(1), "x", a.shape(0), " pixels is larger than 65535 pixels a side");
    Tensor out;
    {
      py::gil_scoped_release nogil;
      out = preprocess_rgb(a.data(), static_cast<int>(a.shape(0)), static_cast<int>(a.shape(1)), model_.config());
    }
    return to_array(out);
  }

  const Model& model() const { return model_; }
  int threads() const { return ctx_.resolved_threads(); }

 private:
  Model model_;
  Context ctx_;
  ForwardOptions options_;
  std::shared_ptr<Backprop> backprop_;
  std::shared_ptr<std::mutex> grad_mutex_ = std::make_shared<std::mutex>();
};

// A stop request for a training run that another Python thread can set
// (vrwkv.train_iter's consumer, when it stops iterating).
struct StopFlag {
  std::atomic<int> value{0};
};

// Ctrl-C during a training run on the main thread: the first SIGINT asks the
// run to stop after its step (with a checkpoint) and then raises
// KeyboardInterrupt; a second one has the default effect (the process ends;
// the checkpoints are written atomically, so none is left half-written).
// Python's own handler only runs between bytecodes, never while the engine
// holds the thread, hence this one, installed for the run and restored after.
std::atomic<std::atomic<int>*> sigint_target{nullptr};

extern "C" void on_sigint(int) {
  if (std::atomic<int>* t = sigint_target.load()) t->store(SIGINT);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGINT, &dfl, nullptr);  // async-signal-safe
}

class SigintScope {
 public:
  SigintScope(bool install, std::atomic<int>& target) : installed_(install) {
    if (!installed_) return;
    sigint_target.store(&target);
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &previous_);
  }
  ~SigintScope() {
    if (!installed_) return;
    sigaction(SIGINT, &previous_, nullptr);
    sigint_target.store(nullptr);
  }
  SigintScope(const SigintScope&) = delete;
  SigintScope& operator=(const SigintScope&) = delete;

 private:
  bool installed_;
  struct sigaction previous_ {};
};

// Trains as `vrwkv train` does: config_json (a configuration's text, named
// `source` in errors) or, with resume, the checkpoint's own configuration.
// callback(record_json) for every metrics record; an exception it raises
// stops the run after a checkpoint and is raised again here. Returns the
// final evaluation as a dict, or None when there was none.
py::object train_model(const std::string& config_json, const std::string& source, const std::string& out_dir,
                       bool resume, bool force, int threads, bool progress, std::int64_t stop_after,
                       const py::object& callback, StopFlag& stop, bool handle_sigint) {
  if (out_dir.empty()) input_error("out_dir: expected a directory name");
  if (resume && force) input_error("resume and force exclude each other");
  if (threads < 0 || threads > 4096) input_error("threads: expected 0 (every core) to 4096, got ", threads);
  if (stop_after < 0) input_error("stop_after: expected a positive number of steps, got ", stop_after);
  train::TrainConfig config;
  if (!resume) config = train::train_config_from_json(config_json, source);
  train::TrainRun run;
  run.out_dir = out_dir, run.resume = resume, run.force = force, run.progress_bar = progress;
  run.stop_after = stop_after, run.ctx.threads = threads, run.stop = &stop.value;
  std::optional<py::error_already_set> raised;  // the callback's exception, destroyed with the GIL held
  if (!callback.is_none())
    run.on_metrics = [&](const std::string& record) {
      py::gil_scoped_acquire gil;
      if (raised) return;
      try {
        callback(py::str(record));
      } catch (py::error_already_set& e) {
        raised.emplace(std::move(e));
        stop.value.store(-1);
      }
    };
  train::EvalResult result;
  {
    const SigintScope sigint(handle_sigint, stop.value);
    py::gil_scoped_release nogil;
    result = train::train(config, run);
  }
  if (raised) throw std::move(*raised);
  if (stop.value.load() == SIGINT) {
    PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  }
  if (result.images == 0) return py::none();
  py::dict out;
  out["top1"] = result.top1, out["top5"] = result.top5, out["loss"] = result.loss, out["images"] = result.images;
  return out;
}

// The address the engine sees for an input (tests check it is the array's own).
std::uintptr_t engine_address(const py::handle& x) {
  const py::array a = py::array::ensure(x);
  if (!a) PyErr_Clear();
  return reinterpret_cast<std::uintptr_t>(as_tensor(x, a ? static_cast<int>(a.ndim()) : 0, "input").raw());
}

}  // namespace
}  // namespace vrwkv::python

PYBIND11_MODULE(_vrwkv, m) {
  using namespace vrwkv;
  using namespace vrwkv::python;
  m.doc() = "vrwkv engine (use the vrwkv package)";

  // vrwkv.Error and its two kinds. The classes live as long as the
  // interpreter: plain references, never released by C++ static teardown
  // (which runs after the interpreter is gone).
  static PyObject* const error =
      PyErr_NewExceptionWithDoc("vrwkv.Error", "Any failure reported by the vrwkv engine.", PyExc_Exception, nullptr);
  static PyObject* const input = PyErr_NewExceptionWithDoc(
      "vrwkv.InputError", "Bad input: a file, a shape or an option the engine cannot take.",
      py::make_tuple(py::handle(error), py::handle(PyExc_ValueError)).ptr(), nullptr);
  static PyObject* const engine = PyErr_NewExceptionWithDoc(
      "vrwkv.EngineError", "A failure of the engine while running on good input.",
      py::make_tuple(py::handle(error), py::handle(PyExc_RuntimeError)).ptr(), nullptr);
  if (!error || !input || !engine) throw py::error_already_set();
  m.attr("Error") = py::handle(error);
  m.attr("InputError") = py::handle(input);
  m.attr("EngineError") = py::handle(engine);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(e.kind() == Error::Kind::Input ? input : engine, e.what());
    }
  });

  py::class_<PyModel>(m, "Model")
      .def_static("load", &PyModel::load, py::arg("path"), py::arg("options"), py::arg("threads"), py::arg("dtype"))
      .def_static("create", &PyModel::create, py::arg("preset"), py::arg("num_classes"), py::arg("seed"),
                  py::arg("options"), py::arg("threads"), py::arg("dtype"))
      .def("forward", &PyModel::forward, py::arg("x"))
      .def("head", &PyModel::head, py::arg("pooled"))
      .def("grad", &PyModel::grad, py::arg("x"), py::arg("labels"), py::arg("label_smoothing"))
      .def("preprocess_files", &PyModel::preprocess_files, py::arg("paths"))
      .def("preprocess_pixels", &PyModel::preprocess_pixels, py::arg("image"))
      .def_property_readonly("config_json", [](const PyModel& p) { return config_to_json(p.model().config()); })
      .def_property_readonly("class_names", [](const PyModel& p) { return class_names(p.model().config()); })
      .def_property_readonly("parameter_count", [](const PyModel& p) { return p.model().parameter_count(); })
      .def_property_readonly("threads", &PyModel::threads)
      .def("flops", [](const PyModel& p, std::int64_t h, std::int64_t w) { return p.model().flops(h, w); })
      .def("input_size", [](const PyModel& p) { return input_size(p.model().config()); })
      .def("parameters", [](const PyModel& p) {
        py::dict out;
        for (const auto& [name, t] : p.model().parameters()) out[py::str(name)] = to_array(t, false);
        return out;
      });
  py::class_<StopFlag>(m, "StopFlag")
      .def(py::init<>())
      .def("request", [](StopFlag& f) { f.value.store(-1); })
      .def_property_readonly("value", [](const StopFlag& f) { return f.value.load(); });
  m.def("train", &train_model, py::arg("config_json"), py::arg("source"), py::arg("out_dir"), py::arg("resume"),
        py::arg("force"), py::arg("threads"), py::arg("progress"), py::arg("stop_after"), py::arg("callback"),
        py::arg("stop"), py::arg("handle_sigint"));
  add_dense(m);
  m.def("preset_names", &preset_names);
  m.def("_engine_address", &engine_address, py::arg("x"));
}
