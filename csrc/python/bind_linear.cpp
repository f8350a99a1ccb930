// linear_forward / linear_backward (CPU) and cuda_linear_forward / _backward: one set of checks for both.
#include <algorithm>

#include "python/bind.h"
#include "python/checks.h"
#include "ops/linear.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/ops/matmul_cuda.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// The checks of a linear forward, shared by the CPU and CUDA entries: x (B,IN), weight (OUT,IN), bias (OUT) or None.
struct LinearForwardArgs {
  DType dt;
  py::array x, w;
  std::optional<py::array> b;
  Activation act;
  int64_t B, IN, OUT;
};
LinearForwardArgs checked_linear_forward_args(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                              const std::string& activation, double slope) {
  LinearForwardArgs r;
  r.x = float_input(x_obj, "x", &r.dt);
  r.w = float_input_like(w_obj, "weight", r.dt, "x");
  check_ndim(r.x, "x", 2);
  check_ndim(r.w, "weight", 2);
  r.B = r.x.shape(0), r.IN = r.x.shape(1), r.OUT = r.w.shape(0);
  if (r.w.shape(1) != r.IN)
    throw py::value_error(cat("weight must have shape (out_features, ", r.IN, ") to match x of shape ", shape_str(r.x), ", got ", shape_str(r.w)));
  if (!b_obj.is_none()) {
    r.b = float_input_like(b_obj, "bias", r.dt, "x");
    check_shape(*r.b, "bias", {r.OUT});
  }
  r.act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  return r;
}

// x (B,IN), weight (OUT,IN), bias (OUT) or None -> (y, z) both (B,OUT)
py::tuple linear_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                               const std::string& activation, double slope) {
  const LinearForwardArgs r = checked_linear_forward_args(x_obj, w_obj, b_obj, activation, slope);
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y = empty<T>({r.B, r.OUT}), z = empty<T>({r.B, r.OUT});
    {
      py::gil_scoped_release nogil;
      linear_forward<T>(ptr<T>(y), ptr<T>(z), ptr<T>(r.x), ptr<T>(r.w), ptr_or_null<T>(r.b), r.B, r.IN, r.OUT, r.act, T(slope));
    }
    return py::make_tuple(y, z);
  });
}

// The checks of a linear backward's inputs, shared by the CPU and CUDA entries: grad_y, z, y (B,OUT);
// x (B,IN); weight (OUT,IN). The identity's derivative needs neither z nor y, so they may be None for it.
struct LinearBackwardArgs {
  DType dt;
  py::array dy, x, w, z, y;
  Activation act;
  int64_t B, IN, OUT;
};
LinearBackwardArgs checked_linear_backward_args(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                                const py::handle& z_obj, const py::handle& y_obj,
                                                const std::string& activation, double slope) {
  LinearBackwardArgs r;
  r.dy = float_input(dy_obj, "grad_y", &r.dt);
  r.x = float_input_like(x_obj, "x", r.dt, "grad_y");
  r.w = float_input_like(w_obj, "weight", r.dt, "grad_y");
  check_ndim(r.x, "x", 2);
  check_ndim(r.w, "weight", 2);
  r.B = r.x.shape(0), r.IN = r.x.shape(1), r.OUT = r.w.shape(0);
  check_shape(r.w, "weight", {r.OUT, r.IN});
  check_shape(r.dy, "grad_y", {r.B, r.OUT});
  r.act = parse_activation(activation);
  const bool need_zy = r.act != Activation::identity || !z_obj.is_none() || !y_obj.is_none();
  r.z = need_zy ? float_input_like(z_obj, "z", r.dt, "grad_y") : r.dy;
  r.y = need_zy ? float_input_like(y_obj, "y", r.dt, "grad_y") : r.dy;
  check_shape(r.z, "z", {r.B, r.OUT});
  check_shape(r.y, "y", {r.B, r.OUT});
  check_finite_scalar(slope, "negative_slope");
  return r;
}

// grad_y, z, y (B,OUT); x (B,IN); weight (OUT,IN) -> (grad_x | None, grad_weight, grad_bias | None)
// grad_weight / grad_bias, when given, are accumulated into in place.
py::tuple linear_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                const py::handle& z_obj, const py::handle& y_obj, const std::string& activation,
                                double slope, bool has_bias, bool need_grad_x, const py::handle& dw_obj,
                                const py::handle& db_obj) {
  LinearBackwardArgs r = checked_linear_backward_args(dy_obj, x_obj, w_obj, z_obj, y_obj, activation, slope);
  const DType dt = r.dt;
  py::array &dy = r.dy, &x = r.x, &w = r.w, &z = r.z, &y = r.y;
  const Activation act = r.act;
  const int64_t B = r.B, IN = r.IN, OUT = r.OUT;
  if (!has_bias && !db_obj.is_none()) throw py::value_error("grad_bias was given but has_bias is False");
  return dispatch(dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array dw, db;
    if (dw_obj.is_none()) {
      dw = empty<T>({OUT, IN});
      std::fill_n(ptr<T>(dw), OUT * IN, T(0));
    } else {
      dw = float_inout_like(dw_obj, "grad_weight", dt, "grad_y");
      check_shape(dw, "grad_weight", {OUT, IN});
      for (auto [in, name] : {std::pair{&dy, "grad_y"}, {&x, "x"}, {&w, "weight"}, {&z, "z"}, {&y, "y"}})
        check_no_overlap(dw, "grad_weight", *in, name);
    }
    if (has_bias) {
      if (db_obj.is_none()) {
        db = empty<T>({OUT});
        std::fill_n(ptr<T>(db), OUT, T(0));
      } else {
        db = float_inout_like(db_obj, "grad_bias", dt, "grad_y");
        check_shape(db, "grad_bias", {OUT});
        for (auto [in, name] : {std::pair{&dy, "grad_y"}, {&x, "x"}, {&w, "weight"}, {&z, "z"}, {&y, "y"}, {&dw, "grad_weight"}})
          check_no_overlap(db, "grad_bias", *in, name);
      }
    }
    py::array dx = need_grad_x ? py::array(empty<T>({B, IN})) : py::array();
    std::vector<T> workspace(act == Activation::identity ? 0 : static_cast<size_t>(B * OUT));
    {
      py::gil_scoped_release nogil;
      linear_backward<T>(need_grad_x ? ptr<T>(dx) : nullptr, ptr<T>(dw), has_bias ? ptr<T>(db) : nullptr,
                         workspace.data(), ptr<T>(dy), ptr<T>(x), ptr<T>(w), ptr<T>(z), ptr<T>(y), B, IN, OUT, act,
                         T(slope));
    }
    return py::make_tuple(need_grad_x ? py::object(dx) : py::none(), dw, has_bias ? py::object(db) : py::none());
  });
}

#if FUSEPROP_CUDA_COMPILED
// x (B,IN), weight (OUT,IN), bias (OUT) or None -> (y, z) both (B,OUT)
py::tuple cuda_linear_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                    const std::string& activation, double slope, bool tf32) {
  require_f32(x_obj, "x");
  const LinearForwardArgs r = checked_linear_forward_args(x_obj, w_obj, b_obj, activation, slope);
  py::array y = empty<float>({r.B, r.OUT}), z = empty<float>({r.B, r.OUT});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer dx = to_device(r.x), dw = to_device(r.w), db = r.b ? to_device(*r.b) : cuda::DeviceBuffer();
    const cuda::DeviceBuffer dy(size_t(y.nbytes())), dz(size_t(z.nbytes()));
    cuda::linear_forward(dy.as<float>(), dz.as<float>(), dx.as<float>(), dw.as<float>(), r.b ? db.as<float>() : nullptr,
                         r.B, r.IN, r.OUT, r.act, float(slope), tf32);
    dy.copy_to_host(ptr<void>(y));
    dz.copy_to_host(ptr<void>(z));
  }
  return py::make_tuple(y, z);
}

// grad_y, z, y (B,OUT); x (B,IN); weight (OUT,IN) -> (grad_x (B,IN), grad_weight (OUT,IN), grad_bias (OUT) | None)
py::tuple cuda_linear_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                     const py::handle& z_obj, const py::handle& y_obj, const std::string& activation,
                                     double slope, bool has_bias, bool tf32) {
  require_f32(dy_obj, "grad_y");
  const LinearBackwardArgs r = checked_linear_backward_args(dy_obj, x_obj, w_obj, z_obj, y_obj, activation, slope);
  py::array dx = empty<float>({r.B, r.IN}), dw = empty<float>({r.OUT, r.IN}), db = empty<float>({has_bias ? r.OUT : 0});
  std::fill_n(ptr<float>(dw), r.OUT * r.IN, 0.f);  // the kernels accumulate into dw and db
  std::fill_n(ptr<float>(db), db.size(), 0.f);
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(r.dy), d_x = to_device(r.x), d_w = to_device(r.w), d_z = to_device(r.z),
                             d_y = to_device(r.y), d_dw = to_device(dw), d_db = to_device(db);
    const cuda::DeviceBuffer d_dx(size_t(dx.nbytes())),
        workspace(r.act == Activation::identity ? 0 : size_t(r.dy.nbytes()));
    cuda::linear_backward(d_dx.as<float>(), d_dw.as<float>(), has_bias ? d_db.as<float>() : nullptr,
                          workspace.as<float>(), d_dy.as<float>(), d_x.as<float>(), d_w.as<float>(), d_z.as<float>(),
                          d_y.as<float>(), r.B, r.IN, r.OUT, r.act, float(slope), tf32);
    d_dx.copy_to_host(ptr<void>(dx));
    d_dw.copy_to_host(ptr<void>(dw));
    d_db.copy_to_host(ptr<void>(db));
  }
  return py::make_tuple(dx, dw, has_bias ? py::object(db) : py::none());
}
#endif

}  // namespace

void bind_linear(py::module_& m) {
  m.def("linear_forward", &linear_forward_entry, "x"_a, "weight"_a, "bias"_a = py::none(), "activation"_a = "identity",
        "negative_slope"_a = 0.01);
  m.def("linear_backward", &linear_backward_entry, "grad_y"_a, "x"_a, "weight"_a, "z"_a, "y"_a, "activation"_a = "identity",
        "negative_slope"_a = 0.01, "has_bias"_a = true, "need_grad_x"_a = true, "grad_weight"_a = py::none(),
        "grad_bias"_a = py::none());
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_linear_forward", &cuda_linear_forward_entry, "x"_a, "weight"_a, "bias"_a = py::none(),
        "activation"_a = "identity", "negative_slope"_a = 0.01, "tf32"_a = false);
  m.def("cuda_linear_backward", &cuda_linear_backward_entry, "grad_y"_a, "x"_a, "weight"_a, "z"_a, "y"_a,
        "activation"_a = "identity", "negative_slope"_a = 0.01, "has_bias"_a = true, "tf32"_a = false);
#endif
}

}  // namespace fuseprop::bindings
