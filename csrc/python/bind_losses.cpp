// cross_entropy_loss, mse_loss, bce_with_logits_loss (CPU) and cuda_cross_entropy_loss: one set of checks for both.
#include <type_traits>

#include "python/bind.h"
#include "python/checks.h"
#include "ops/losses.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/ops/losses_cuda.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// The checks of a cross-entropy loss, shared by the CPU and CUDA entries: logits (B,C), labels (B).
struct CrossEntropyArgs {
  DType dt;
  py::array logits, labels;
  bool mean;
  int64_t B, C;
};
CrossEntropyArgs checked_cross_entropy_args(const py::handle& logits_obj, const py::handle& labels_obj,
                                            double label_smoothing, const std::string& reduction) {
  CrossEntropyArgs r;
  r.logits = float_input(logits_obj, "logits", &r.dt);
  check_ndim(r.logits, "logits", 2);
  r.B = r.logits.shape(0), r.C = r.logits.shape(1);
  if (r.C == 0) throw py::value_error("logits must have at least one class (shape (B, C) with C >= 1), got shape " + shape_str(r.logits));
  r.labels = checked_labels(labels_obj, r.B, r.C);
  check_range(label_smoothing, "label_smoothing", 0.0, 1.0, true);
  r.mean = parse_reduction(reduction);
  if (r.mean && r.B == 0) throw py::value_error("cross_entropy_loss: an empty batch has no mean loss (logits has shape " + shape_str(r.logits) + ")");
  return r;
}

// logits (B,C), labels (B) -> (loss, grad_logits (B,C))
py::tuple cross_entropy_entry(const py::handle& logits_obj, const py::handle& labels_obj, double label_smoothing,
                              const std::string& reduction) {
  const CrossEntropyArgs r = checked_cross_entropy_args(logits_obj, labels_obj, label_smoothing, reduction);
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array grad = empty<T>({r.B, r.C});
    double total;
    {
      py::gil_scoped_release nogil;
      const T scale = r.mean ? T(1.0 / double(r.B)) : T(1);
      total = cross_entropy_forward_backward<T>(ptr<T>(grad), ptr<T>(r.logits), static_cast<const int64_t*>(r.labels.data()),
                                                r.B, r.C, T(label_smoothing), scale);
    }
    return py::make_tuple(r.mean ? total / double(r.B) : total, grad);
  });
}

// pred, target: same shape -> (loss, grad_pred); elementwise losses share this entry
template <double (*KernelF)(float*, const float*, const float*, int64_t, float),
          double (*KernelD)(double*, const double*, const double*, int64_t, double)>
py::tuple elementwise_loss_entry(const char* op, const char* pred_name, const py::handle& pred_obj,
                                 const py::handle& target_obj, const std::string& reduction) {
  DType dt;
  py::array pred = float_input(pred_obj, pred_name, &dt);
  py::array target = float_input_like(target_obj, "target", dt, pred_name);
  check_same_shape(target, "target", pred, pred_name);
  const bool mean = parse_reduction(reduction);
  const int64_t n = pred.size();
  if (mean && n == 0) throw py::value_error(cat(op, ": an empty batch has no mean loss (", pred_name, " has shape ", shape_str(pred), ")"));
  return dispatch(dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array grad(pred.dtype(), std::vector<py::ssize_t>(pred.shape(), pred.shape() + pred.ndim()));
    double total;
    {
      py::gil_scoped_release nogil;
      const T scale = mean ? T(1.0 / double(n)) : T(1);
      if constexpr (std::is_same_v<T, float>) total = KernelF(ptr<T>(grad), ptr<T>(pred), ptr<T>(target), n, scale);
      else total = KernelD(ptr<T>(grad), ptr<T>(pred), ptr<T>(target), n, scale);
    }
    return py::make_tuple(mean ? total / double(n) : total, grad);
  });
}

#if FUSEPROP_CUDA_COMPILED
// logits (B,C), labels (B) -> (loss, grad_logits (B,C))
py::tuple cuda_cross_entropy_entry(const py::handle& logits_obj, const py::handle& labels_obj, double label_smoothing,
                                   const std::string& reduction) {
  require_f32(logits_obj, "logits");
  const CrossEntropyArgs r = checked_cross_entropy_args(logits_obj, labels_obj, label_smoothing, reduction);
  py::array grad = empty<float>({r.B, r.C});
  require_device();
  double total = 0;
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_logits = to_device(r.logits), d_labels = to_device(r.labels), d_grad(size_t(grad.nbytes())),
                             d_rows(size_t(r.B) * sizeof(double)), d_total(sizeof(double));
    const float scale = r.mean ? float(1.0 / double(r.B)) : 1.f;
    cuda::cross_entropy_forward_backward(d_total.as<double>(), d_grad.as<float>(), d_rows.as<double>(),
                                         d_logits.as<float>(), d_labels.as<int64_t>(), r.B, r.C, float(label_smoothing),
                                         scale);
    d_grad.copy_to_host(ptr<void>(grad));
    d_total.copy_to_host(&total);
  }
  return py::make_tuple(r.mean ? total / double(r.B) : total, grad);
}
#endif

}  // namespace

void bind_losses(py::module_& m) {
  m.def("cross_entropy_loss", &cross_entropy_entry, "logits"_a, "labels"_a, "label_smoothing"_a = 0.0, "reduction"_a = "mean");
  m.def("mse_loss", [](const py::handle& pred, const py::handle& target, const std::string& reduction) {
          return elementwise_loss_entry<mse_forward_backward<float>, mse_forward_backward<double>>("mse_loss", "pred", pred, target, reduction);
        }, "pred"_a, "target"_a, "reduction"_a = "mean");
  m.def("bce_with_logits_loss", [](const py::handle& logits, const py::handle& target, const std::string& reduction) {
          return elementwise_loss_entry<bce_with_logits_forward_backward<float>, bce_with_logits_forward_backward<double>>(
              "bce_with_logits_loss", "logits", logits, target, reduction);
        }, "logits"_a, "target"_a, "reduction"_a = "mean");
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_cross_entropy_loss", &cuda_cross_entropy_entry, "logits"_a, "labels"_a, "label_smoothing"_a = 0.0,
        "reduction"_a = "mean");
#endif
}

}  // namespace fuseprop::bindings
