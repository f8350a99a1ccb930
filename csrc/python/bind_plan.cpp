// TrainPlan (CPU) and CudaTrainPlan: the whole training step in one native call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "plan/batches.h"
#include "plan/network.h"
#include "python/bind.h"
#include "python/checks.h"
#include "python/plan_spec.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/core/memory.h"
#include "cuda/plan/train_plan.h"
#include "python/device_array.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// ---- the CPU plan's arrays: numpy arrays of one float dtype (the first parameter's)
struct HostArrays {
  DType dtype = DType::f32;
  std::vector<py::array> data, grad;
  std::vector<std::optional<py::array>> state_a, state_b;
  std::vector<std::pair<py::array, std::string>> written;  // for the overlap check

  void param(const std::string& name, const py::handle data_obj, const py::handle grad_obj) {
    const std::string grad_name = name + ".grad";
    if (data.empty()) dtype = float_dtype(as_array(data_obj, name.c_str()), name.c_str());
    data.push_back(float_inout_like(data_obj, name.c_str(), dtype, "the first parameter"));
    grad.push_back(float_inout_like(grad_obj, grad_name.c_str(), dtype, "the first parameter"));
    check_same_shape(grad.back(), grad_name.c_str(), data.back(), name.c_str());
    written.emplace_back(data.back(), name);
    written.emplace_back(grad.back(), grad_name);
    state_a.emplace_back();
    state_b.emplace_back();
    names.push_back(name);
  }
  void state(int which, const std::string& state_name, const py::handle obj) {
    py::array a = float_inout_like(obj, state_name.c_str(), dtype, "the parameters");
    check_same_shape(a, state_name.c_str(), data.back(), names.back().c_str());
    written.emplace_back(a, state_name);
    (which == 0 ? state_a : state_b).back() = a;
  }
  void check_no_overlap() const {
    for (size_t i = 0; i < written.size(); ++i)
      for (size_t j = i + 1; j < written.size(); ++j)
        bindings::check_no_overlap(written[i].first, written[i].second.c_str(), written[j].first, written[j].second.c_str());
  }
  void check_weight(size_t slot, const std::string& name) const {
    const py::array& w = data[slot];
    check_ndim(w, name.c_str(), 2);
    if (w.shape(0) < 1 || w.shape(1) < 1)
      throw py::value_error(cat(name, " must have at least one row and one column, got shape ", shape_str(w)));
  }
  std::vector<int64_t> shape(size_t slot) const { return {data[slot].shape(), data[slot].shape() + data[slot].ndim()}; }

  template <typename T>
  std::vector<ParamSlot<T>> slots() const {
    std::vector<ParamSlot<T>> s;
    for (size_t i = 0; i < data.size(); ++i)
      s.push_back({ptr<T>(data[i]), ptr<T>(grad[i]), ptr_or_null<T>(state_a[i]), ptr_or_null<T>(state_b[i]),
                   int64_t(data[i].size()), OptimizerHyper{}, 1});
    return s;
  }

 private:
  std::vector<std::string> names;
};

// A TrainPlan over a model's own arrays. The constructor checks every array once (dtype, layout,
// writeability, shapes chaining layer to layer, no two sharing memory) and keeps a reference to each,
// so the pointers the plan holds stay valid as long as it lives. step() checks the batch, the
// targets, the hyper-parameters and the step counts before anything is written, then runs forward,
// loss, backward and update in one native call without the GIL.
class TrainPlanEntry {
 public:
  // layers, params: see PlanSpec.
  TrainPlanEntry(const py::sequence& layers, const py::sequence& params, const std::string& loss,
                 const std::string& optimizer, double label_smoothing, const std::string& reduction, int64_t groups) {
    HostArrays arrays;
    spec_ = parse_plan_spec(layers, params, loss, optimizer, label_smoothing, reduction, groups, arrays);
    dtype_ = arrays.dtype;
    dispatch(dtype_, [&](auto tag) {
      using T = decltype(tag);
      std::vector<ParamSlot<T>> slots = arrays.slots<T>();
      std::vector<DenseLayer<T>> dense = dense_layers(spec_, slots);
      plan<T>() = std::make_unique<TrainPlan<T>>(std::move(dense), std::move(slots), spec_.loss_spec, spec_.optimizer);
    });
  }

  // x (B,IN); target: labels (B,) int64 in [0, OUT) for cross-entropy, else (B,OUT) of x's dtype.
  // hyper: one tuple per param group, (lr, momentum, dampening, nesterov, weight_decay) for SGD,
  // (lr, beta1, beta2, eps, weight_decay) for Adam / AdamW. steps: one count per parameter (SGD: 1 on
  // the momentum buffer's first update, else 2; Adam: this update's number, from 1).
  // Returns the loss; raises FloatingPointError as Sequential.train_step does.
  double step(const py::handle& x_obj, const py::handle& target_obj, const py::sequence& hyper, const py::sequence& steps,
              double max_grad_norm) {
    if (!(max_grad_norm >= 0)) throw py::value_error(cat("max_grad_norm must be >= 0 (0: no clipping), got ", max_grad_norm));
    if (state_.busy) throw std::runtime_error("TrainPlan.step is already running in another thread");
    py::array x = as_array(x_obj, "x");
    check_dtype(x, "x", dtype_, "the parameters");
    check_layout(x, "x");
    check_ndim(x, "x", 2);
    const int64_t B = x.shape(0);
    if (B == 0) throw py::value_error(cat("train_step needs a non-empty batch, got x of shape ", shape_str(x)));
    if (x.shape(1) != spec_.in_features)
      throw py::value_error(cat("x must have ", spec_.in_features, " features in its last dimension, got shape ", shape_str(x)));
    py::array target;
    if (spec_.loss == LossKind::cross_entropy) {
      target = checked_labels(target_obj, B, spec_.out_features);
    } else {
      target = float_input_like(target_obj, "target", dtype_, "x");
      if (target.ndim() != 2 || target.shape(0) != B || target.shape(1) != spec_.out_features)
        throw py::value_error(cat("target must have the same shape as ", spec_.loss == LossKind::mse ? "pred" : "logits",
                                  " (", B, ", ", spec_.out_features, "), got ", shape_str(target)));
    }
    dispatch(dtype_, [&](auto tag) { set_hyper(plan<decltype(tag)>()->params(), spec_, hyper, steps); });
    return dispatch(dtype_, [&](auto tag) -> double {
      using T = decltype(tag);
      TrainPlan<T>& p = *plan<T>();
      if (B > std::numeric_limits<int64_t>::max() / int64_t(sizeof(T)) / p.row_elements())
        throw py::value_error(cat("a batch of ", B, " rows needs a workspace too large to allocate"));
      const bool labels = spec_.loss == LossKind::cross_entropy;
      StepResult result;
      state_.busy = true;
      state_.updated = false;
      try {
        py::gil_scoped_release nogil;
        result = p.step(ptr<T>(x), labels ? ptr<int64_t>(target) : nullptr, labels ? nullptr : ptr<T>(target), B,
                        max_grad_norm);
      } catch (...) {
        state_.busy = false;
        throw;
      }
      state_.busy = false;
      state_.record(result);
      raise_for_status(result, spec_.names);
      return result.loss;
    });
  }

  // Many steps in one call (fit's epochs): batch after batch gathered from the whole training set.
  // x (N,IN) of the parameters' dtype; target: labels (N,) int64 for cross-entropy, else (N,OUT) of x's
  // dtype. order: None (batch b is rows b*batch_size .. of x, in place) or (M,) int64 row indices in
  // [0, N): batch b is order[b*batch_size : (b+1)*batch_size] (the last one may be shorter). Runs
  // batches first_batch .. first_batch+n_batches-1, which must exist. hyper, steps: as step(), for the
  // first of them; later steps count on (Adam +1 per update, SGD 2 after a momentum buffer's first).
  // lrs: None, or (n_batches, groups) float64, finite and >= 0: batch first_batch+j's lr per group.
  // Everything is checked (the labels and indices the batches use included) before the first step.
  // Returns (losses (n_batches,) float64, correct (n_batches,) int64), one entry per batch. A refused
  // step raises as step() does, after batches_done batches; updated, correct and grad_norm are the last
  // step's, as after step().
  py::tuple run_batches(const py::handle& x_obj, const py::handle& target_obj, const py::handle& order_obj,
                        int64_t batch_size, int64_t first_batch, int64_t n_batches, const py::sequence& hyper,
                        const py::sequence& steps, double max_grad_norm, const py::handle& lrs_obj) {
    if (state_.busy) throw std::runtime_error("TrainPlan.step is already running in another thread");
    batches_done_ = 0;
    if (!(max_grad_norm >= 0)) throw py::value_error(cat("max_grad_norm must be >= 0 (0: no clipping), got ", max_grad_norm));
    py::array x = as_array(x_obj, "x");
    check_dtype(x, "x", dtype_, "the parameters");
    check_layout(x, "x");
    check_ndim(x, "x", 2);
    if (x.shape(1) != spec_.in_features)
      throw py::value_error(cat("x must have ", spec_.in_features, " features in its last dimension, got shape ", shape_str(x)));
    const int64_t N = x.shape(0);
    const bool labels = spec_.loss == LossKind::cross_entropy;
    py::array target;
    if (labels) {
      target = as_array(target_obj, "labels");
      if (!target.dtype().equal(py::dtype::of<int64_t>()))
        throw py::type_error(cat("labels must be class indices with dtype int64, got ", dtype_str(target)));
      check_layout(target, "labels");
      check_shape(target, "labels", {N});
    } else {
      target = float_input_like(target_obj, "target", dtype_, "x");
      check_shape(target, "target", {N, spec_.out_features});
    }
    std::optional<py::array> order;
    if (!order_obj.is_none()) {
      order = as_array(order_obj, "order");
      if (!order->dtype().equal(py::dtype::of<int64_t>()))
        throw py::type_error(cat("order must hold row indices with dtype int64, got ", dtype_str(*order)));
      check_layout(*order, "order");
      check_ndim(*order, "order", 1);
    }
    if (batch_size < 1) throw py::value_error(cat("batch_size must be >= 1, got ", batch_size));
    const int64_t rows = order ? order->shape(0) : N, batches = rows / batch_size + (rows % batch_size != 0);
    if (first_batch < 0 || n_batches < 0 || first_batch > batches || n_batches > batches - first_batch)
      throw py::value_error(cat("batches ", first_batch, " .. ", first_batch, " + ", n_batches, " do not exist: ", rows,
                                " rows make ", batches, " batches of ", batch_size));
    std::optional<py::array> lrs;
    if (!lrs_obj.is_none()) {
      lrs = as_array(lrs_obj, "lrs");
      if (!lrs->dtype().equal(py::dtype::of<double>())) throw py::type_error(cat("lrs must have dtype float64, got ", dtype_str(*lrs)));
      check_layout(*lrs, "lrs");
      check_shape(*lrs, "lrs", {n_batches, spec_.groups});
      const double* v = ptr<double>(*lrs);
      for (int64_t i = 0; i < n_batches * spec_.groups; ++i)
        if (!(std::isfinite(v[i]) && v[i] >= 0))
          throw py::value_error(cat("lrs[", i / spec_.groups, ", ", i % spec_.groups, "] (the lr of param group ", i % spec_.groups,
                                    " in batch ", first_batch + i / spec_.groups, ") must be finite and >= 0, got ", v[i]));
    }
    // The rows these batches use: their indices, then their labels.
    const int64_t begin = first_batch * batch_size, end = first_batch + n_batches == batches ? rows : (first_batch + n_batches) * batch_size;
    const int64_t* index = order ? ptr<int64_t>(*order) : nullptr;
    for (int64_t i = begin; index && i < end; ++i)
      if (index[i] < 0 || index[i] >= N)
        throw py::value_error(cat("order[", i, "] is ", index[i], ": row indices must be in [0, ", N, ") for x of shape ", shape_str(x)));
    if (labels) {
      const int64_t* l = ptr<int64_t>(target);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t r = index ? index[i] : i;
        if (l[r] < 0 || l[r] >= spec_.out_features)
          throw py::value_error(cat("labels must be in [0, ", spec_.out_features, ") for logits with ", spec_.out_features,
                                    " classes; labels[", r, "] is ", l[r]));
      }
    }
    const int64_t B = std::min(batch_size, rows);
    if (B > std::numeric_limits<int64_t>::max() / int64_t(sizeof(double)) / std::max({row_elements(), spec_.in_features, spec_.out_features}))
      throw py::value_error(cat("a batch of ", B, " rows needs a workspace too large to allocate"));
    dispatch(dtype_, [&](auto tag) { set_hyper(plan<decltype(tag)>()->params(), spec_, hyper, steps); });

    py::array_t<double> losses = empty<double>({n_batches});
    py::array_t<int64_t> correct = empty<int64_t>({n_batches});
    if (n_batches == 0) return py::make_tuple(losses, correct);
    const BatchRun run = dispatch(dtype_, [&](auto tag) -> BatchRun {
      using T = decltype(tag);
      const BatchSource<T> src{ptr<T>(x), labels ? ptr<int64_t>(target) : nullptr, labels ? nullptr : ptr<T>(target),
                               index, rows, batch_size, spec_.in_features, spec_.out_features};
      BatchBuffers<T>& buf = buffers<T>();
      batches_reserve(buf, src);
      state_.busy = true;
      state_.updated = false;
      try {
        py::gil_scoped_release nogil;
        const BatchRun r = fuseprop::run_batches(*plan<T>(), buf, ptr<double>(losses), ptr<int64_t>(correct), src,
                                                 first_batch, n_batches, lrs ? ptr<double>(*lrs) : nullptr,
                                                 spec_.slot_group.data(), spec_.groups, spec_.optimizer, max_grad_norm);
        state_.busy = false;
        return r;
      } catch (...) {
        state_.busy = false;
        throw;
      }
    });
    batches_done_ = run.done;
    state_.record(run.last);
    raise_for_status(run.last, spec_.names);
    return py::make_tuple(losses, correct);
  }

  // A new (B,OUT) array: the gradient of the last step's loss with respect to the model's output.
  py::array loss_grad() const {
    if (state_.busy) throw std::runtime_error("TrainPlan.step is running in another thread");
    return dispatch(dtype_, [&](auto tag) -> py::array {
      using T = decltype(tag);
      const TrainPlan<T>& p = *plan<T>();
      if (p.steps() == 0) throw std::runtime_error("TrainPlan.loss_grad: no step has run yet");
      py::array out = empty<T>({p.last_batch(), spec_.out_features});
      std::copy_n(p.loss_grad(), p.last_batch() * spec_.out_features, ptr<T>(out));
      return out;
    });
  }

  int64_t allocations() const { return dispatch(dtype_, [&](auto tag) { return plan<decltype(tag)>()->allocations(); }); }
  int64_t capacity() const { return dispatch(dtype_, [&](auto tag) { return plan<decltype(tag)>()->capacity(); }); }
  int64_t steps() const { return dispatch(dtype_, [&](auto tag) { return plan<decltype(tag)>()->steps(); }); }
  bool updated() const { return state_.updated; }
  int64_t correct() const { return state_.correct; }
  double grad_norm() const { return state_.grad_norm; }
  int64_t batches_done() const { return batches_done_; }

 private:
  template <typename T>
  std::unique_ptr<TrainPlan<T>>& plan() {
    if constexpr (std::is_same_v<T, float>) return f32_; else return f64_;
  }
  template <typename T>
  const std::unique_ptr<TrainPlan<T>>& plan() const {
    if constexpr (std::is_same_v<T, float>) return f32_; else return f64_;
  }

  template <typename T>
  BatchBuffers<T>& buffers() {
    if constexpr (std::is_same_v<T, float>) return f32_batches_; else return f64_batches_;
  }
  int64_t row_elements() const { return dispatch(dtype_, [&](auto tag) { return plan<decltype(tag)>()->row_elements(); }); }

  std::unique_ptr<TrainPlan<float>> f32_;
  std::unique_ptr<TrainPlan<double>> f64_;
  BatchBuffers<float> f32_batches_;       // run_batches gathers each batch here
  BatchBuffers<double> f64_batches_;
  int64_t batches_done_ = 0;              // the last run_batches' batches whose step returned ok
  DType dtype_ = DType::f32;
  PlanSpec spec_;                         // the layers, names and groups; keeps every array alive
  StepState state_;
};

#if FUSEPROP_CUDA_COMPILED
// ---- the CUDA plan's arrays: float32 DeviceArrays on the GPU
struct DeviceArrays {
  std::vector<ParamSlot<float>> slots;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::pair<const unsigned char*, size_t>> spans;  // for the overlap check
  std::vector<std::string> span_names;

  void param(const std::string& name, const py::handle data_obj, const py::handle grad_obj) {
    const std::string grad_name = name + ".grad";
    const DeviceArray& data = cuda_array_arg(data_obj, name.c_str(), ElemType::f32);
    const DeviceArray& grad = cuda_array_arg(grad_obj, grad_name.c_str(), ElemType::f32);
    name_ = name;
    shapes.push_back(data.shape);
    same_shape(data, name);
    same_shape(grad, grad_name);
    slots.push_back({data.as<float>(), grad.as<float>(), nullptr, nullptr, data.size(), OptimizerHyper{}, 1});
  }
  void state(int which, const std::string& state_name, const py::handle obj) {
    const DeviceArray& s = cuda_array_arg(obj, state_name.c_str(), ElemType::f32);
    same_shape(s, state_name);
    (which == 0 ? slots.back().state_a : slots.back().state_b) = s.as<float>();
  }
  void check_no_overlap() const {
    for (size_t i = 0; i < spans.size(); ++i)
      for (size_t j = i + 1; j < spans.size(); ++j) {
        const auto [p, n] = spans[i];
        const auto [q, m] = spans[j];
        if (n && m && p < q + m && q < p + n)
          throw py::value_error(cat(span_names[i], " and ", span_names[j], " share memory; each must have its own"));
      }
  }
  void check_weight(size_t slot, const std::string& name) const {
    const std::vector<int64_t>& ws = shapes[slot];
    if (ws.size() != 2 || ws[0] < 1 || ws[1] < 1)
      throw py::value_error(cat(name, " must be 2-D with at least one row and one column, got shape ", dims_str(ws)));
  }
  std::vector<int64_t> shape(size_t slot) const { return shapes[slot]; }

 private:
  // a (data, grad or a state of the current parameter): writeable, data's shape; noted for the overlap check
  void same_shape(const DeviceArray& a, const std::string& what) {
    check_writable_device(a, what.c_str());
    if (a.shape != shapes.back())
      throw py::value_error(cat(what, " must have the same shape as ", name_, " ", dims_str(shapes.back()), ", got ",
                                dims_str(a.shape)));
    spans.emplace_back(a.data, a.nbytes());
    span_names.push_back(what);
  }
  std::string name_;  // the current parameter's
};

class CudaTrainPlanEntry {
 public:
  // As TrainPlan (above), with DeviceArrays for data, grad and state; float32 only.
  CudaTrainPlanEntry(const py::sequence& layers, const py::sequence& params, const std::string& loss,
                     const std::string& optimizer, double label_smoothing, const std::string& reduction, int64_t groups,
                     bool tf32, bool fused) {
    DeviceArrays arrays;
    spec_ = parse_plan_spec(layers, params, loss, optimizer, label_smoothing, reduction, groups, arrays);
    std::vector<DenseLayer<float>> dense = dense_layers(spec_, arrays.slots);
    require_device();
    plan_ = std::make_unique<cuda::TrainPlan>(std::move(dense), std::move(arrays.slots), spec_.loss_spec,
                                              spec_.optimizer, tf32, fused);
  }

  // x: (B, IN) float32, a DeviceArray on the GPU or an ndarray (staged over); target: labels (B,) int64
  // for cross-entropy, else (B, OUT) float32, either kind. Returns the loss; raises as TrainPlan.step.
  double step(const py::handle& x_obj, const py::handle& target_obj, const py::sequence& hyper, const py::sequence& steps,
              double max_grad_norm) {
    if (!(max_grad_norm >= 0)) throw py::value_error(cat("max_grad_norm must be >= 0 (0: no clipping), got ", max_grad_norm));
    if (state_.busy) throw std::runtime_error("TrainPlan.step is already running in another thread");
    const float* x = static_cast<const float*>(input(x_obj, "x", x_stage_, ElemType::f32, {-1, spec_.in_features}));
    const int64_t B = batch_;
    const bool labels = spec_.loss == LossKind::cross_entropy;
    const void* target = labels ? input(target_obj, "labels", t_stage_, ElemType::i64, {B})
                                : input(target_obj, "target", t_stage_, ElemType::f32, {B, spec_.out_features});
    set_hyper(plan_->params(), spec_, hyper, steps);
    StepResult result;
    state_.busy = true;
    state_.updated = false;
    try {
      py::gil_scoped_release nogil;
      result = plan_->step(x, labels ? static_cast<const int64_t*>(target) : nullptr,
                           labels ? nullptr : static_cast<const float*>(target), B, max_grad_norm);
    } catch (...) {
      state_.busy = false;
      throw;
    }
    state_.busy = false;
    if (plan_->bad_label() != ~0ull) {
      int64_t v = 0;
      cuda::copy_to_host(&v, static_cast<const int64_t*>(target) + plan_->bad_label(), sizeof v);
      throw py::value_error(cat("labels must be in [0, ", spec_.out_features, ") for logits with ", spec_.out_features, " classes; labels[",
                                plan_->bad_label(), "] is ", v, " (the weights were not updated)"));
    }
    state_.record(result);
    raise_for_status(result, spec_.names);
    return result.loss;
  }

  // x (B, IN) -> a new DeviceArray (B, OUT): the network's output.
  std::shared_ptr<DeviceArray> forward(const py::handle& x_obj) {
    if (state_.busy) throw std::runtime_error("TrainPlan.step is running in another thread");
    const float* x = static_cast<const float*>(input(x_obj, "x", x_stage_, ElemType::f32, {-1, spec_.in_features}));
    auto out = device_empty({batch_, spec_.out_features}, ElemType::f32);
    py::gil_scoped_release nogil;
    plan_->forward(out->as<float>(), x, batch_);
    return out;
  }

  int64_t allocations() const { return plan_->allocations(); }
  int64_t capacity() const { return plan_->capacity(); }
  int64_t steps() const { return plan_->steps(); }
  bool fused() const { return plan_->fused(); }
  bool updated() const { return state_.updated; }
  int64_t correct() const { return state_.correct; }
  double grad_norm() const { return state_.grad_norm; }

 private:
  // A device pointer to obj's data: a CUDA DeviceArray as it is, an ndarray staged into `stage`.
  // dims: the expected shape, -1 for the batch (which sets batch_, and must not be 0).
  const void* input(const py::handle& obj, const char* name, cuda::DeviceBuffer& stage, ElemType type,
                    std::vector<int64_t> dims) {
    std::vector<int64_t> shape;
    const void* host = nullptr;
    const DeviceArray* dev = nullptr;
    if (is_device_array(obj)) {
      dev = &cuda_array_arg(obj, name, type);
      shape = dev->shape;
    } else {
      const py::array a = as_array(obj, name);
      if (elem_type_of(a, name) != type)
        throw py::type_error(cat(name, " must have dtype ", elem_name(type), ", got ", dtype_str(a)));
      check_layout(a, name);
      shape.assign(a.shape(), a.shape() + a.ndim());
      host = a.data();
      stage_keep_ = a;
    }
    if (dims[0] == -1) {
      if (shape.size() != dims.size() || shape[1] != dims[1])
        throw py::value_error(cat(name, " must have shape (B, ", dims[1], "), got ", dims_str(shape)));
      if (shape[0] == 0) throw py::value_error(cat("train_step needs a non-empty batch, got ", name, " of shape ", dims_str(shape)));
      batch_ = dims[0] = shape[0];
    }
    if (shape != dims) throw py::value_error(cat(name, " must have shape ", dims_str(dims), ", got ", dims_str(shape)));
    if (type == ElemType::i64 && host) {  // labels from the host are checked here, before they go over
      const int64_t* l = static_cast<const int64_t*>(host);
      for (int64_t i = 0; i < dims[0]; ++i)
        if (l[i] < 0 || l[i] >= spec_.out_features)
          throw py::value_error(cat("labels must be in [0, ", spec_.out_features, ") for logits with ", spec_.out_features,
                                    " classes; labels[", i, "] is ", l[i]));
    }
    if (dev) return dev->data;
    size_t bytes = 1;
    for (int64_t d : dims) bytes *= size_t(d);
    bytes *= elem_size(type);
    require_device();
    if (stage.bytes() < bytes) stage = cuda::DeviceBuffer(bytes);
    py::gil_scoped_release nogil;
    cuda::copy_to_device_staged(stage.as<void>(), host, bytes);
    return stage.as<void>();
  }

  std::unique_ptr<cuda::TrainPlan> plan_;
  PlanSpec spec_;  // the layers, names and groups; keeps every DeviceArray alive
  int64_t batch_ = 0;
  cuda::DeviceBuffer x_stage_, t_stage_;  // host batches land here
  py::object stage_keep_;
  StepState state_;
};
#endif

}  // namespace

void bind_plan(py::module_& m) {
  py::class_<TrainPlanEntry>(m, "TrainPlan",
                             "The whole training step of a chain of Linear(+activation) layers in one native call, "
                             "on the model's own arrays; the workspace grows with the batch and is reused.")
      .def(py::init<const py::sequence&, const py::sequence&, const std::string&, const std::string&, double,
                    const std::string&, int64_t>(),
           "layers"_a, "params"_a, py::kw_only(), "loss"_a, "optimizer"_a, "label_smoothing"_a = 0.0,
           "reduction"_a = "mean", "groups"_a = 1)
      .def("step", &TrainPlanEntry::step, "x"_a, "target"_a, "hyper"_a, "steps"_a, "max_grad_norm"_a = 0.0)
      .def("run_batches", &TrainPlanEntry::run_batches, "x"_a, "target"_a, "order"_a, "batch_size"_a, "first_batch"_a,
           "n_batches"_a, "hyper"_a, "steps"_a, "max_grad_norm"_a = 0.0, "lrs"_a = py::none())
      .def_property_readonly("batches_done", &TrainPlanEntry::batches_done)
      .def("loss_grad", &TrainPlanEntry::loss_grad)
      .def_property_readonly("allocations", &TrainPlanEntry::allocations)
      .def_property_readonly("capacity", &TrainPlanEntry::capacity)
      .def_property_readonly("steps", &TrainPlanEntry::steps)
      .def_property_readonly("updated", &TrainPlanEntry::updated)
      .def_property_readonly("correct", &TrainPlanEntry::correct)
      .def_property_readonly("grad_norm", &TrainPlanEntry::grad_norm);
#if FUSEPROP_CUDA_COMPILED
  py::class_<CudaTrainPlanEntry>(m, "CudaTrainPlan",
                                 "TrainPlan on the GPU: the model's parameters, gradients and optimizer state are DeviceArrays")
      .def(py::init<const py::sequence&, const py::sequence&, const std::string&, const std::string&, double,
                    const std::string&, int64_t, bool, bool>(),
           "layers"_a, "params"_a, py::kw_only(), "loss"_a, "optimizer"_a, "label_smoothing"_a = 0.0,
           "reduction"_a = "mean", "groups"_a = 1, "tf32"_a = true, "fused"_a = true)
      .def("step", &CudaTrainPlanEntry::step, "x"_a, "target"_a, "hyper"_a, "steps"_a, "max_grad_norm"_a = 0.0)
      .def("forward", &CudaTrainPlanEntry::forward, "x"_a)
      .def_property_readonly("allocations", &CudaTrainPlanEntry::allocations)
      .def_property_readonly("capacity", &CudaTrainPlanEntry::capacity)
      .def_property_readonly("steps", &CudaTrainPlanEntry::steps)
      .def_property_readonly("fused", &CudaTrainPlanEntry::fused)
      .def_property_readonly("updated", &CudaTrainPlanEntry::updated)
      .def_property_readonly("correct", &CudaTrainPlanEntry::correct)
      .def_property_readonly("grad_norm", &CudaTrainPlanEntry::grad_norm);
#endif
}

}  // namespace fuseprop::bindings
