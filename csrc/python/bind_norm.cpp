// batch_norm_forward / _backward and layer_norm_forward / _backward (CPU).
#include <algorithm>

#include "python/bind.h"
#include "python/checks.h"
#include "ops/norm.h"

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

// x (N, C, *spatial); weight, bias, running_mean, running_var (C,) or None -> (y like x, save_mean (C,),
// save_invstd (C,)). training: running_* (when given) are updated in place.
py::tuple batch_norm_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                   const py::handle& rm_obj, const py::handle& rv_obj, bool training, double momentum,
                                   double eps) {
  DType dt;
  const std::optional<py::array> x = float_input(x_obj, "x", &dt);
  const std::vector<int64_t> ncs = channel_dims(*x, "x");
  const int64_t N = ncs[0], C = ncs[1], S = ncs[2];
  const std::optional<py::array> w = optional_input(w_obj, "weight", dt, "x", {C});
  const std::optional<py::array> b = optional_input(b_obj, "bias", dt, "x", {C});
  const std::optional<py::array> rm =
      optional_inout(rm_obj, "running_mean", dt, "x", {C}, {{&x, "x"}, {&w, "weight"}, {&b, "bias"}});
  const std::optional<py::array> rv = optional_inout(rv_obj, "running_var", dt, "x", {C},
                                                     {{&x, "x"}, {&w, "weight"}, {&b, "bias"}, {&rm, "running_mean"}});
  if (rm.has_value() != rv.has_value())
    throw py::value_error("running_mean and running_var must either both be None or neither be None");
  if (!training && !rm)
    throw py::value_error("running_mean and running_var are required when training is False (evaluation "
                          "normalises with the running statistics)");
  check_range(momentum, "momentum", 0.0, 1.0, true);
  check_eps(eps);
  if (training && N * S == 1)
    throw py::value_error(cat("Expected more than 1 value per channel when training, got input size ", shape_str(*x)));
  return dispatch(dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y(x->dtype(), std::vector<py::ssize_t>(x->shape(), x->shape() + x->ndim()));
    py::array save_mean = empty<T>({C}), save_invstd = empty<T>({C});
    {
      py::gil_scoped_release nogil;
      batch_norm_forward<T>(ptr<T>(y), ptr<T>(save_mean), ptr<T>(save_invstd), ptr_or_null<T>(rm), ptr_or_null<T>(rv),
                            ptr<T>(*x), ptr_or_null<T>(w), ptr_or_null<T>(b), N, C, S, training, momentum, eps);
    }
    return py::make_tuple(y, save_mean, save_invstd);
  });
}

// grad_y, x (N, C, *spatial); weight (C,) or None; save_mean, save_invstd (C,) -> (grad_x | None,
// grad_weight (C,) | None, grad_bias (C,) | None). Given grad_weight / grad_bias accumulate in place;
// without them the parameter gradients are new arrays when weight is given, None when it is not.
py::tuple batch_norm_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                    const py::handle& mean_obj, const py::handle& invstd_obj, bool training,
                                    bool need_grad_x, const py::handle& dw_obj, const py::handle& db_obj) {
  DType dt;
  const std::optional<py::array> dy = float_input(dy_obj, "grad_y", &dt);
  const std::optional<py::array> x = float_input_like(x_obj, "x", dt, "grad_y");
  const std::vector<int64_t> ncs = channel_dims(*x, "x");
  const int64_t N = ncs[0], C = ncs[1], S = ncs[2];
  check_same_shape(*dy, "grad_y", *x, "x");
  const std::optional<py::array> w = optional_input(w_obj, "weight", dt, "grad_y", {C});
  const std::optional<py::array> mean = float_input_like(mean_obj, "save_mean", dt, "grad_y");
  check_shape(*mean, "save_mean", {C});
  const std::optional<py::array> invstd = float_input_like(invstd_obj, "save_invstd", dt, "grad_y");
  check_shape(*invstd, "save_invstd", {C});
  const std::optional<py::array> dw_given = optional_inout(
      dw_obj, "grad_weight", dt, "grad_y", {C},
      {{&dy, "grad_y"}, {&x, "x"}, {&w, "weight"}, {&mean, "save_mean"}, {&invstd, "save_invstd"}});
  const std::optional<py::array> db_given = optional_inout(
      db_obj, "grad_bias", dt, "grad_y", {C},
      {{&dy, "grad_y"}, {&x, "x"}, {&w, "weight"}, {&mean, "save_mean"}, {&invstd, "save_invstd"},
       {&dw_given, "grad_weight"}});
  return dispatch(dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    std::optional<py::array> dw = dw_given, db = db_given;
    if (!dw && w) dw = zeros<T>({C});
    if (!db && w) db = zeros<T>({C});
    std::optional<py::array> dx;
    if (need_grad_x) dx = py::array(x->dtype(), std::vector<py::ssize_t>(x->shape(), x->shape() + x->ndim()));
    {
      py::gil_scoped_release nogil;
      batch_norm_backward<T>(ptr_or_null<T>(dx), ptr_or_null<T>(dw), ptr_or_null<T>(db), ptr<T>(*dy), ptr<T>(*x),
                             ptr_or_null<T>(w), ptr<T>(*mean), ptr<T>(*invstd), N, C, S, training);
    }
    return py::make_tuple(or_none(dx), or_none(dw), or_none(db));
  });
}

// x (*, normalized_shape); weight, bias (normalized_shape) or None -> (y like x, mean, rstd (x.shape[:-k]))
py::tuple layer_norm_forward_entry(const py::handle& x_obj, const std::vector<int64_t>& normalized_shape,
                                   const py::handle& w_obj, const py::handle& b_obj, double eps) {
  DType dt;
  const std::optional<py::array> x = float_input(x_obj, "x", &dt);
  const std::vector<int64_t> lead = leading_dims(*x, "x", normalized_shape);
  const std::optional<py::array> w = optional_input(w_obj, "weight", dt, "x", normalized_shape);
  const std::optional<py::array> b = optional_input(b_obj, "bias", dt, "x", normalized_shape);
  check_eps(eps);
  const int64_t M = product(lead), D = product(normalized_shape);
  return dispatch(dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y(x->dtype(), std::vector<py::ssize_t>(x->shape(), x->shape() + x->ndim()));
    py::array mean = empty<T>(lead), rstd = empty<T>(lead);
    {
      py::gil_scoped_release nogil;
      layer_norm_forward<T>(ptr<T>(y), ptr<T>(mean), ptr<T>(rstd), ptr<T>(*x), ptr_or_null<T>(w), ptr_or_null<T>(b),
                            M, D, eps);
    }
    return py::make_tuple(y, mean, rstd);
  });
}

// grad_y, x (*, normalized_shape); weight (normalized_shape) or None; mean, rstd (x.shape[:-k]) ->
// (grad_x | None, grad_weight | None, grad_bias | None), the parameter gradients as batch_norm_backward's.
py::tuple layer_norm_backward_entry(const py::handle& dy_obj, const py::handle& x_obj,
                                    const std::vector<int64_t>& normalized_shape, const py::handle& w_obj,
                                    const py::handle& mean_obj, const py::handle& rstd_obj, bool need_grad_x,
                                    const py::handle& dw_obj, const py::handle& db_obj) {
  DType dt;
  const std::optional<py::array> dy = float_input(dy_obj, "grad_y", &dt);
  const std::optional<py::array> x = float_input_like(x_obj, "x", dt, "grad_y");
  const std::vector<int64_t> lead = leading_dims(*x, "x", normalized_shape);
  check_same_shape(*dy, "grad_y", *x, "x");
  const std::optional<py::array> w = optional_input(w_obj, "weight", dt, "grad_y", normalized_shape);
  const std::optional<py::array> mean = float_input_like(mean_obj, "mean", dt, "grad_y");
  check_shape(*mean, "mean", lead);
  const std::optional<py::array> rstd = float_input_like(rstd_obj, "rstd", dt, "grad_y");
  check_shape(*rstd, "rstd", lead);
  const std::optional<py::array> dw_given =
      optional_inout(dw_obj, "grad_weight", dt, "grad_y", normalized_shape,
                     {{&dy, "grad_y"}, {&x, "x"}, {&w, "weight"}, {&mean, "mean"}, {&rstd, "rstd"}});
  const std::optional<py::array> db_given = optional_inout(
      db_obj, "grad_bias", dt, "grad_y", normalized_shape,
      {{&dy, "grad_y"}, {&x, "x"}, {&w, "weight"}, {&mean, "mean"}, {&rstd, "rstd"}, {&dw_given, "grad_weight"}});
  const int64_t M = product(lead), D = product(normalized_shape);
  return dispatch(dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    std::optional<py::array> dw = dw_given, db = db_given;
    if (!dw && w) dw = zeros<T>(normalized_shape);
    if (!db && w) db = zeros<T>(normalized_shape);
    std::optional<py::array> dx;
    if (need_grad_x) dx = py::array(x->dtype(), std::vector<py::ssize_t>(x->shape(), x->shape() + x->ndim()));
    {
      py::gil_scoped_release nogil;
      layer_norm_backward<T>(ptr_or_null<T>(dx), ptr_or_null<T>(dw), ptr_or_null<T>(db), ptr<T>(*dy), ptr<T>(*x),
                             ptr_or_null<T>(w), ptr<T>(*mean), ptr<T>(*rstd), M, D);
    }
    return py::make_tuple(or_none(dx), or_none(dw), or_none(db));
  });
}

}  // namespace

void bind_norm(py::module_& m) {
  m.def("batch_norm_forward", &batch_norm_forward_entry, "x"_a, "weight"_a, "bias"_a, "running_mean"_a,
        "running_var"_a, "training"_a, "momentum"_a = 0.1, "eps"_a = 1e-5);
  m.def("batch_norm_backward", &batch_norm_backward_entry, "grad_y"_a, "x"_a, "weight"_a, "save_mean"_a,
        "save_invstd"_a, "training"_a, "need_grad_x"_a = true, "grad_weight"_a = py::none(), "grad_bias"_a = py::none());
  m.def("layer_norm_forward", &layer_norm_forward_entry, "x"_a, "normalized_shape"_a, "weight"_a = py::none(),
        "bias"_a = py::none(), "eps"_a = 1e-5);
  m.def("layer_norm_backward", &layer_norm_backward_entry, "grad_y"_a, "x"_a, "normalized_shape"_a, "weight"_a,
        "mean"_a, "rstd"_a, "need_grad_x"_a = true, "grad_weight"_a = py::none(), "grad_bias"_a = py::none());
}

}  // namespace fuseprop::bindings
