// batch_norm_forward / _backward and layer_norm_forward / _backward (CPU), and their CUDA twins cuda_*
// (float32): one set of checks for both.
#include <algorithm>

#include "python/bind.h"
#include "python/checks.h"
#include "ops/norm.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/ops/norm_cuda.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// An optional array read by the kernel: None, or float_input_like with the given shape.
std::optional<py::array> optional_input(const py::handle& obj, const char* name, DType dt, const char* like,
                                        const std::vector<int64_t>& dims) {
  if (obj.is_none()) return std::nullopt;
  py::array a = float_input_like(obj, name, dt, like);
  check_shape(a, name, dims);
  return a;
}

// An optional array updated in place: None, or float_inout_like with the given shape, sharing no memory with
// any of `reads`.
using Named = std::pair<const std::optional<py::array>*, const char*>;
std::optional<py::array> optional_inout(const py::handle& obj, const char* name, DType dt, const char* like,
                                        const std::vector<int64_t>& dims, std::initializer_list<Named> reads) {
  if (obj.is_none()) return std::nullopt;
  py::array a = float_inout_like(obj, name, dt, like);
  check_shape(a, name, dims);
  for (auto [in, in_name] : reads)
    if (*in) check_no_overlap(a, name, **in, in_name);
  return a;
}

void check_eps(double eps) {
  check_finite_scalar(eps, "eps");
  if (eps <= 0) throw py::value_error(cat("eps must be > 0, got ", eps));
}

// x (N, C, *spatial): at least 2-D, channels on axis 1. Returns {N, C, S}, S the product of the spatial dims.
std::vector<int64_t> channel_dims(const py::array& x, const char* name) {
  if (x.ndim() < 2)
    throw py::value_error(cat(name, " must be at least 2-D (N, C, *spatial), got a ", x.ndim(), "-D array of shape ",
                              shape_str(x)));
  int64_t S = 1;
  for (py::ssize_t i = 2; i < x.ndim(); ++i) S *= x.shape(i);
  return {x.shape(0), x.shape(1), S};
}

std::vector<int64_t> shape_of(const py::array& a, py::ssize_t from, py::ssize_t to) {
  return std::vector<int64_t>(a.shape() + from, a.shape() + to);
}

int64_t product(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

// x (*, normalized_shape): returns the leading shape (the statistics' shape) after checking the trailing one.
std::vector<int64_t> leading_dims(const py::array& x, const char* name, const std::vector<int64_t>& normalized_shape) {
  if (normalized_shape.empty())
    throw py::value_error("normalized_shape must have at least one dimension, got ()");
  const auto k = static_cast<py::ssize_t>(normalized_shape.size());
  if (x.ndim() < k || shape_of(x, x.ndim() - k, x.ndim()) != normalized_shape) {
    std::string want = "(*";
    for (int64_t d : normalized_shape) want += cat(", ", d);
    throw py::value_error(cat(name, " must have shape ", want, ") to be normalised over normalized_shape ",
                              dims_str(normalized_shape), ", got ", shape_str(x)));
  }
  return shape_of(x, 0, x.ndim() - k);
}

template <typename T>
py::array zeros(const std::vector<int64_t>& dims) {
  py::array a = empty<T>(dims);
  std::fill_n(ptr<T>(a), a.size(), T(0));
  return a;
}

py::object or_none(const std::optional<py::array>& a) { return a ? py::object(*a) : py::none(); }

py::array like(const py::array& x) {
  return py::array(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
}

// The checks of a batch_norm forward, shared by the CPU and CUDA entries: x (N, C, *spatial); weight, bias,
// running_mean, running_var (C,) or None (the running statistics both or neither, and required in evaluation).
struct BatchNormForwardArgs {
  DType dt;
  std::optional<py::array> x, w, b, rm, rv;
  int64_t N, C, S;
};
BatchNormForwardArgs checked_batch_norm_forward_args(const py::handle& x_obj, const py::handle& w_obj,
                                                     const py::handle& b_obj, const py::handle& rm_obj,
                                                     const py::handle& rv_obj, bool training, double momentum,
                                                     double eps) {
  BatchNormForwardArgs r;
  r.x = float_input(x_obj, "x", &r.dt);
  const std::vector<int64_t> ncs = channel_dims(*r.x, "x");
  r.N = ncs[0], r.C = ncs[1], r.S = ncs[2];
  r.w = optional_input(w_obj, "weight", r.dt, "x", {r.C});
  r.b = optional_input(b_obj, "bias", r.dt, "x", {r.C});
  r.rm = optional_inout(rm_obj, "running_mean", r.dt, "x", {r.C}, {{&r.x, "x"}, {&r.w, "weight"}, {&r.b, "bias"}});
  r.rv = optional_inout(rv_obj, "running_var", r.dt, "x", {r.C},
                        {{&r.x, "x"}, {&r.w, "weight"}, {&r.b, "bias"}, {&r.rm, "running_mean"}});
  if (r.rm.has_value() != r.rv.has_value())
    throw py::value_error("running_mean and running_var must either both be None or neither be None");
  if (!training && !r.rm)
    throw py::value_error("running_mean and running_var are required when training is False (evaluation "
                          "normalises with the running statistics)");
  check_range(momentum, "momentum", 0.0, 1.0, true);
  check_eps(eps);
  if (training && r.N * r.S == 1)
    throw py::value_error(cat("Expected more than 1 value per channel when training, got input size ", shape_str(*r.x)));
  return r;
}

// x (N, C, *spatial); weight, bias, running_mean, running_var (C,) or None -> (y like x, save_mean (C,),
// save_invstd (C,)). training: running_* (when given) are updated in place.
py::tuple batch_norm_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                   const py::handle& rm_obj, const py::handle& rv_obj, bool training, double momentum,
                                   double eps, const std::string& activation, double slope) {
  const BatchNormForwardArgs r =
      checked_batch_norm_forward_args(x_obj, w_obj, b_obj, rm_obj, rv_obj, training, momentum, eps);
  const Activation act = parse_activation(activation);
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y = like(*r.x);
    py::array save_mean = empty<T>({r.C}), save_invstd = empty<T>({r.C});
    {
      py::gil_scoped_release nogil;
      batch_norm_forward<T>(ptr<T>(y), ptr<T>(save_mean), ptr<T>(save_invstd), ptr_or_null<T>(r.rm),
                            ptr_or_null<T>(r.rv), ptr<T>(*r.x), ptr_or_null<T>(r.w), ptr_or_null<T>(r.b), r.N, r.C, r.S,
                            training, momentum, eps, act, T(slope));
    }
    return py::make_tuple(y, save_mean, save_invstd);
  });
}

// The checks of a batch_norm backward, shared by the CPU and CUDA entries: grad_y, x (N, C, *spatial);
// weight (C,) or None; save_mean, save_invstd (C,); grad_weight, grad_bias (C,) or None, updated in place.
// With an activation after the normalisation: y (the forward's output, like x) and bias (C,) or None.
struct BatchNormBackwardArgs {
  DType dt;
  std::optional<py::array> dy, x, w, mean, invstd, dw, db, y, b;
  int64_t N, C, S;
  Activation act;
};
BatchNormBackwardArgs checked_batch_norm_backward_args(const py::handle& dy_obj, const py::handle& x_obj,
                                                       const py::handle& w_obj, const py::handle& mean_obj,
                                                       const py::handle& invstd_obj, const py::handle& dw_obj,
                                                       const py::handle& db_obj, const py::handle& y_obj,
                                                       const py::handle& b_obj, const std::string& activation) {
  BatchNormBackwardArgs r;
  r.dy = float_input(dy_obj, "grad_y", &r.dt);
  r.x = float_input_like(x_obj, "x", r.dt, "grad_y");
  const std::vector<int64_t> ncs = channel_dims(*r.x, "x");
  r.N = ncs[0], r.C = ncs[1], r.S = ncs[2];
  check_same_shape(*r.dy, "grad_y", *r.x, "x");
  r.w = optional_input(w_obj, "weight", r.dt, "grad_y", {r.C});
  r.mean = float_input_like(mean_obj, "save_mean", r.dt, "grad_y");
  check_shape(*r.mean, "save_mean", {r.C});
  r.invstd = float_input_like(invstd_obj, "save_invstd", r.dt, "grad_y");
  check_shape(*r.invstd, "save_invstd", {r.C});
  r.dw = optional_inout(dw_obj, "grad_weight", r.dt, "grad_y", {r.C},
                        {{&r.dy, "grad_y"}, {&r.x, "x"}, {&r.w, "weight"}, {&r.mean, "save_mean"},
                         {&r.invstd, "save_invstd"}});
  r.db = optional_inout(db_obj, "grad_bias", r.dt, "grad_y", {r.C},
                        {{&r.dy, "grad_y"}, {&r.x, "x"}, {&r.w, "weight"}, {&r.mean, "save_mean"},
                         {&r.invstd, "save_invstd"}, {&r.dw, "grad_weight"}});
  r.act = parse_activation(activation);
  if (r.act != Activation::identity) {  // the activation's derivative reads y and the recomputed z
    if (y_obj.is_none())
      throw py::value_error(cat("y (the forward's output) is required with activation '", activation, "'"));
    r.y = float_input_like(y_obj, "y", r.dt, "grad_y");
    check_same_shape(*r.y, "y", *r.x, "x");
    r.b = optional_input(b_obj, "bias", r.dt, "grad_y", {r.C});
  }
  return r;
}

// grad_y, x (N, C, *spatial); weight (C,) or None; save_mean, save_invstd (C,) -> (grad_x | None,
// grad_weight (C,) | None, grad_bias (C,) | None). Given grad_weight / grad_bias accumulate in place;
// without them the parameter gradients are new arrays when weight is given, None when it is not.
py::tuple batch_norm_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                    const py::handle& mean_obj, const py::handle& invstd_obj, bool training,
                                    bool need_grad_x, const py::handle& dw_obj, const py::handle& db_obj,
                                    const py::handle& y_obj, const py::handle& b_obj, const std::string& activation,
                                    double slope) {
  const BatchNormBackwardArgs r = checked_batch_norm_backward_args(dy_obj, x_obj, w_obj, mean_obj, invstd_obj, dw_obj,
                                                                   db_obj, y_obj, b_obj, activation);
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    std::optional<py::array> dw = r.dw, db = r.db;
    if (!dw && r.w) dw = zeros<T>({r.C});
    if (!db && r.w) db = zeros<T>({r.C});
    std::optional<py::array> dx;
    if (need_grad_x) dx = like(*r.x);
    {
      py::gil_scoped_release nogil;
      batch_norm_backward<T>(ptr_or_null<T>(dx), ptr_or_null<T>(dw), ptr_or_null<T>(db), ptr<T>(*r.dy), ptr<T>(*r.x),
                             ptr_or_null<T>(r.y), ptr_or_null<T>(r.w), ptr_or_null<T>(r.b), ptr<T>(*r.mean),
                             ptr<T>(*r.invstd), r.N, r.C, r.S, training, r.act, T(slope));
    }
    return py::make_tuple(or_none(dx), or_none(dw), or_none(db));
  });
}

// The checks of a layer_norm forward, shared by the CPU and CUDA entries: x (*, normalized_shape); weight,
// bias (normalized_shape) or None.
struct LayerNormForwardArgs {
  DType dt;
  std::optional<py::array> x, w, b;
  std::vector<int64_t> lead;
  int64_t M, D;
};
LayerNormForwardArgs checked_layer_norm_forward_args(const py::handle& x_obj, const std::vector<int64_t>& normalized_shape,
                                                     const py::handle& w_obj, const py::handle& b_obj, double eps) {
  LayerNormForwardArgs r;
  r.x = float_input(x_obj, "x", &r.dt);
  r.lead = leading_dims(*r.x, "x", normalized_shape);
  r.w = optional_input(w_obj, "weight", r.dt, "x", normalized_shape);
  r.b = optional_input(b_obj, "bias", r.dt, "x", normalized_shape);
  check_eps(eps);
  r.M = product(r.lead), r.D = product(normalized_shape);
  return r;
}

// x (*, normalized_shape); weight, bias (normalized_shape) or None -> (y like x, mean, rstd (x.shape[:-k]))
py::tuple layer_norm_forward_entry(const py::handle& x_obj, const std::vector<int64_t>& normalized_shape,
                                   const py::handle& w_obj, const py::handle& b_obj, double eps) {
  const LayerNormForwardArgs r = checked_layer_norm_forward_args(x_obj, normalized_shape, w_obj, b_obj, eps);
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y = like(*r.x);
    py::array mean = empty<T>(r.lead), rstd = empty<T>(r.lead);
    {
      py::gil_scoped_release nogil;
      layer_norm_forward<T>(ptr<T>(y), ptr<T>(mean), ptr<T>(rstd), ptr<T>(*r.x), ptr_or_null<T>(r.w),
                            ptr_or_null<T>(r.b), r.M, r.D, eps);
    }
    return py::make_tuple(y, mean, rstd);
  });
}

// The checks of a layer_norm backward, shared by the CPU and CUDA entries: grad_y, x (*, normalized_shape);
// weight (normalized_shape) or None; mean, rstd (x.shape[:-k]); grad_weight, grad_bias or None, updated in place.
struct LayerNormBackwardArgs {
  DType dt;
  std::optional<py::array> dy, x, w, mean, rstd, dw, db;
  int64_t M, D;
};
LayerNormBackwardArgs checked_layer_norm_backward_args(const py::handle& dy_obj, const py::handle& x_obj,
                                                       const std::vector<int64_t>& normalized_shape,
                                                       const py::handle& w_obj, const py::handle& mean_obj,
                                                       const py::handle& rstd_obj, const py::handle& dw_obj,
                                                       const py::handle& db_obj) {
  LayerNormBackwardArgs r;
  r.dy = float_input(dy_obj, "grad_y", &r.dt);
  r.x = float_input_like(x_obj, "x", r.dt, "grad_y");
  const std::vector<int64_t> lead = leading_dims(*r.x, "x", normalized_shape);
  check_same_shape(*r.dy, "grad_y", *r.x, "x");
  r.w = optional_input(w_obj, "weight", r.dt, "grad_y", normalized_shape);
  r.mean = float_input_like(mean_obj, "mean", r.dt, "grad_y");
  check_shape(*r.mean, "mean", lead);
  r.rstd = float_input_like(rstd_obj, "rstd", r.dt, "grad_y");
  check_shape(*r.rstd, "rstd", lead);
  r.dw = optional_inout(dw_obj, "grad_weight", r.dt, "grad_y", normalized_shape,
                        {{&r.dy, "grad_y"}, {&r.x, "x"}, {&r.w, "weight"}, {&r.mean, "mean"}, {&r.rstd, "rstd"}});
  r.db = optional_inout(db_obj, "grad_bias", r.dt, "grad_y", normalized_shape,
                        {{&r.dy, "grad_y"}, {&r.x, "x"}, {&r.w, "weight"}, {&r.mean, "mean"}, {&r.rstd, "rstd"},
                         {&r.dw, "grad_weight"}});
  r.M = product(lead), r.D = product(normalized_shape);
  return r;
}

// grad_y, x (*, normalized_shape); weight (normalized_shape) or None; mean, rstd (x.shape[:-k]) ->
// (grad_x | None, grad_weight | None, grad_bias | None), the parameter gradients as batch_norm_backward's.
py::tuple layer_norm_backward_entry(const py::handle& dy_obj, const py::handle& x_obj,
                                    const std::vector<int64_t>& normalized_shape, const py::handle& w_obj,
                                    const py::handle& mean_obj, const py::handle& rstd_obj, bool need_grad_x,
                                    const py::handle& dw_obj, const py::handle& db_obj) {
  const LayerNormBackwardArgs r =
      checked_layer_norm_backward_args(dy_obj, x_obj, normalized_shape, w_obj, mean_obj, rstd_obj, dw_obj, db_obj);
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    std::optional<py::array> dw = r.dw, db = r.db;
    if (!dw && r.w) dw = zeros<T>(normalized_shape);
    if (!db && r.w) db = zeros<T>(normalized_shape);
    std::optional<py::array> dx;
    if (need_grad_x) dx = like(*r.x);
    {
      py::gil_scoped_release nogil;
      layer_norm_backward<T>(ptr_or_null<T>(dx), ptr_or_null<T>(dw), ptr_or_null<T>(db), ptr<T>(*r.dy), ptr<T>(*r.x),
                             ptr_or_null<T>(r.w), ptr<T>(*r.mean), ptr<T>(*r.rstd), r.M, r.D);
    }
    return py::make_tuple(or_none(dx), or_none(dw), or_none(db));
  });
}

#if FUSEPROP_CUDA_COMPILED
// -- the CUDA twins: float32 first, the same checks, outputs allocated, then the device ------------------

// An optional host array's copy on the device (empty when None), and its device pointer (null when None).
cuda::DeviceBuffer to_device_or_empty(const std::optional<py::array>& a) {
  return a ? to_device(*a) : cuda::DeviceBuffer();
}
float* dptr(const cuda::DeviceBuffer& d, const std::optional<py::array>& a) { return a ? d.as<float>() : nullptr; }

// As batch_norm_forward; the running statistics are updated in place on the host arrays.
py::tuple cuda_batch_norm_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                        const py::handle& rm_obj, const py::handle& rv_obj, bool training,
                                        double momentum, double eps, const std::string& activation, double slope) {
  require_f32(x_obj, "x");
  const BatchNormForwardArgs r =
      checked_batch_norm_forward_args(x_obj, w_obj, b_obj, rm_obj, rv_obj, training, momentum, eps);
  const Activation act = parse_activation(activation);
  py::array y = like(*r.x), save_mean = empty<float>({r.C}), save_invstd = empty<float>({r.C});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_x = to_device(*r.x), d_w = to_device_or_empty(r.w), d_b = to_device_or_empty(r.b),
                             d_rm = to_device_or_empty(r.rm), d_rv = to_device_or_empty(r.rv);
    const cuda::DeviceBuffer d_y(size_t(y.nbytes())), d_mean(size_t(save_mean.nbytes())),
        d_invstd(size_t(save_invstd.nbytes()));
    cuda::batch_norm_forward(d_y.as<float>(), d_mean.as<float>(), d_invstd.as<float>(), dptr(d_rm, r.rm),
                             dptr(d_rv, r.rv), d_x.as<float>(), dptr(d_w, r.w), dptr(d_b, r.b), r.N, r.C, r.S, training,
                             momentum, eps, act, float(slope));
    d_y.copy_to_host(ptr<void>(y));
    d_mean.copy_to_host(ptr<void>(save_mean));
    d_invstd.copy_to_host(ptr<void>(save_invstd));
    if (r.rm) d_rm.copy_to_host(ptr<void>(*r.rm));
    if (r.rv) d_rv.copy_to_host(ptr<void>(*r.rv));
  }
  return py::make_tuple(y, save_mean, save_invstd);
}

// As batch_norm_backward: given grad_weight / grad_bias accumulate in place.
py::tuple cuda_batch_norm_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                         const py::handle& mean_obj, const py::handle& invstd_obj, bool training,
                                         bool need_grad_x, const py::handle& dw_obj, const py::handle& db_obj,
                                         const py::handle& y_obj, const py::handle& b_obj, const std::string& activation,
                                         double slope) {
  require_f32(dy_obj, "grad_y");
  const BatchNormBackwardArgs r = checked_batch_norm_backward_args(dy_obj, x_obj, w_obj, mean_obj, invstd_obj, dw_obj,
                                                                   db_obj, y_obj, b_obj, activation);
  std::optional<py::array> dw = r.dw, db = r.db, dx;
  if (!dw && r.w) dw = zeros<float>({r.C});
  if (!db && r.w) db = zeros<float>({r.C});
  if (need_grad_x) dx = like(*r.x);
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(*r.dy), d_x = to_device(*r.x), d_w = to_device_or_empty(r.w),
                             d_mean = to_device(*r.mean), d_invstd = to_device(*r.invstd), d_dw = to_device_or_empty(dw),
                             d_db = to_device_or_empty(db), d_dx(dx ? size_t(dx->nbytes()) : 0),
                             d_y = to_device_or_empty(r.y), d_b = to_device_or_empty(r.b);
    cuda::batch_norm_backward(dptr(d_dx, dx), dptr(d_dw, dw), dptr(d_db, db), d_dy.as<float>(), d_x.as<float>(),
                              dptr(d_y, r.y), dptr(d_w, r.w), dptr(d_b, r.b), d_mean.as<float>(), d_invstd.as<float>(),
                              r.N, r.C, r.S, training, r.act, float(slope));
    if (dx) d_dx.copy_to_host(ptr<void>(*dx));
    if (dw) d_dw.copy_to_host(ptr<void>(*dw));
    if (db) d_db.copy_to_host(ptr<void>(*db));
  }
  return py::make_tuple(or_none(dx), or_none(dw), or_none(db));
}

// As layer_norm_forward.
py::tuple cuda_layer_norm_forward_entry(const py::handle& x_obj, const std::vector<int64_t>& normalized_shape,
                                        const py::handle& w_obj, const py::handle& b_obj, double eps) {
  require_f32(x_obj, "x");
  const LayerNormForwardArgs r = checked_layer_norm_forward_args(x_obj, normalized_shape, w_obj, b_obj, eps);
  py::array y = like(*r.x), mean = empty<float>(r.lead), rstd = empty<float>(r.lead);
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_x = to_device(*r.x), d_w = to_device_or_empty(r.w), d_b = to_device_or_empty(r.b);
    const cuda::DeviceBuffer d_y(size_t(y.nbytes())), d_mean(size_t(mean.nbytes())), d_rstd(size_t(rstd.nbytes()));
    cuda::layer_norm_forward(d_y.as<float>(), d_mean.as<float>(), d_rstd.as<float>(), d_x.as<float>(), dptr(d_w, r.w),
                             dptr(d_b, r.b), r.M, r.D, eps);
    d_y.copy_to_host(ptr<void>(y));
    d_mean.copy_to_host(ptr<void>(mean));
    d_rstd.copy_to_host(ptr<void>(rstd));
  }
  return py::make_tuple(y, mean, rstd);
}

// As layer_norm_backward: given grad_weight / grad_bias accumulate in place.
py::tuple cuda_layer_norm_backward_entry(const py::handle& dy_obj, const py::handle& x_obj,
                                         const std::vector<int64_t>& normalized_shape, const py::handle& w_obj,
                                         const py::handle& mean_obj, const py::handle& rstd_obj, bool need_grad_x,
                                         const py::handle& dw_obj, const py::handle& db_obj) {
  require_f32(dy_obj, "grad_y");
  const LayerNormBackwardArgs r =
      checked_layer_norm_backward_args(dy_obj, x_obj, normalized_shape, w_obj, mean_obj, rstd_obj, dw_obj, db_obj);
  std::optional<py::array> dw = r.dw, db = r.db, dx;
  if (!dw && r.w) dw = zeros<float>(normalized_shape);
  if (!db && r.w) db = zeros<float>(normalized_shape);
  if (need_grad_x) dx = like(*r.x);
  // Workspace doubles: a size of existing extents (partitions <= M, times D), so M * D bounds it.
  const size_t ws_bytes = size_t(cuda::layer_norm_backward_workspace(r.M, r.D)) * sizeof(double);
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(*r.dy), d_x = to_device(*r.x), d_w = to_device_or_empty(r.w),
                             d_mean = to_device(*r.mean), d_rstd = to_device(*r.rstd), d_dw = to_device_or_empty(dw),
                             d_db = to_device_or_empty(db), d_dx(dx ? size_t(dx->nbytes()) : 0), ws(ws_bytes);
    cuda::layer_norm_backward(dptr(d_dx, dx), dptr(d_dw, dw), dptr(d_db, db), ws.as<double>(), d_dy.as<float>(),
                              d_x.as<float>(), dptr(d_w, r.w), d_mean.as<float>(), d_rstd.as<float>(), r.M, r.D);
    if (dx) d_dx.copy_to_host(ptr<void>(*dx));
    if (dw) d_dw.copy_to_host(ptr<void>(*dw));
    if (db) d_db.copy_to_host(ptr<void>(*db));
  }
  return py::make_tuple(or_none(dx), or_none(dw), or_none(db));
}
#endif

}  // namespace

void bind_norm(py::module_& m) {
  m.def("batch_norm_forward", &batch_norm_forward_entry, "x"_a, "weight"_a, "bias"_a, "running_mean"_a,
        "running_var"_a, "training"_a, "momentum"_a = 0.1, "eps"_a = 1e-5, "activation"_a = "identity",
        "negative_slope"_a = 0.01);
  m.def("batch_norm_backward", &batch_norm_backward_entry, "grad_y"_a, "x"_a, "weight"_a, "save_mean"_a,
        "save_invstd"_a, "training"_a, "need_grad_x"_a = true, "grad_weight"_a = py::none(), "grad_bias"_a = py::none(),
        "y"_a = py::none(), "bias"_a = py::none(), "activation"_a = "identity", "negative_slope"_a = 0.01);
  m.def("layer_norm_forward", &layer_norm_forward_entry, "x"_a, "normalized_shape"_a, "weight"_a = py::none(),
        "bias"_a = py::none(), "eps"_a = 1e-5);
  m.def("layer_norm_backward", &layer_norm_backward_entry, "grad_y"_a, "x"_a, "normalized_shape"_a, "weight"_a,
        "mean"_a, "rstd"_a, "need_grad_x"_a = true, "grad_weight"_a = py::none(), "grad_bias"_a = py::none());
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_batch_norm_forward", &cuda_batch_norm_forward_entry, "x"_a, "weight"_a, "bias"_a, "running_mean"_a,
        "running_var"_a, "training"_a, "momentum"_a = 0.1, "eps"_a = 1e-5, "activation"_a = "identity",
        "negative_slope"_a = 0.01);
  m.def("cuda_batch_norm_backward", &cuda_batch_norm_backward_entry, "grad_y"_a, "x"_a, "weight"_a, "save_mean"_a,
        "save_invstd"_a, "training"_a, "need_grad_x"_a = true, "grad_weight"_a = py::none(), "grad_bias"_a = py::none(),
        "y"_a = py::none(), "bias"_a = py::none(), "activation"_a = "identity", "negative_slope"_a = 0.01);
  m.def("cuda_layer_norm_forward", &cuda_layer_norm_forward_entry, "x"_a, "normalized_shape"_a, "weight"_a = py::none(),
        "bias"_a = py::none(), "eps"_a = 1e-5);
  m.def("cuda_layer_norm_backward", &cuda_layer_norm_backward_entry, "grad_y"_a, "x"_a, "normalized_shape"_a, "weight"_a,
        "mean"_a, "rstd"_a, "need_grad_x"_a = true, "grad_weight"_a = py::none(), "grad_bias"_a = py::none());
#endif
}

}  // namespace fuseprop::bindings
