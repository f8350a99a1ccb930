// activation_forward / _backward, softmax and log-softmax (CPU); cuda_activation_forward / _backward.
#include "python/bind.h"
#include "python/checks.h"
#include "ops/activations.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/ops/activations_cuda.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// x, y: any shape, elementwise
py::array activation_forward_entry(const py::handle& x_obj, const std::string& activation, double slope) {
  DType dt;
  py::array x = float_input(x_obj, "x", &dt);
  const Activation act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array y(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    py::gil_scoped_release nogil;
    activation_forward<T>(ptr<T>(y), ptr<T>(x), x.size(), act, T(slope));
    return y;
  });
}

// dy, x, y: same shape; returns dx
py::array activation_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& y_obj,
                                    const std::string& activation, double slope) {
  DType dt;
  py::array dy = float_input(dy_obj, "grad_y", &dt);
  py::array x = float_input_like(x_obj, "x", dt, "grad_y");
  py::array y = float_input_like(y_obj, "y", dt, "grad_y");
  check_same_shape(x, "x", dy, "grad_y");
  check_same_shape(y, "y", dy, "grad_y");
  const Activation act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dx(dy.dtype(), std::vector<py::ssize_t>(dy.shape(), dy.shape() + dy.ndim()));
    py::gil_scoped_release nogil;
    activation_backward<T>(ptr<T>(dx), ptr<T>(dy), ptr<T>(x), ptr<T>(y), dy.size(), act, T(slope));
    return dx;
  });
}

// x (B,C) -> y (B,C), row-wise
template <bool Log>
py::array softmax_forward_entry(const py::handle& x_obj) {
  DType dt;
  py::array x = float_input(x_obj, "x", &dt);
  check_ndim(x, "x", 2);
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array y = empty<T>({x.shape(0), x.shape(1)});
    py::gil_scoped_release nogil;
    (Log ? log_softmax_forward<T> : softmax_forward<T>)(ptr<T>(y), ptr<T>(x), x.shape(0), x.shape(1));
    return y;
  });
}

// dy, y (B,C) -> dx (B,C)
template <bool Log>
py::array softmax_backward_entry(const py::handle& dy_obj, const py::handle& y_obj) {
  DType dt;
  py::array dy = float_input(dy_obj, "grad_y", &dt);
  py::array y = float_input_like(y_obj, "y", dt, "grad_y");
  check_ndim(dy, "grad_y", 2);
  check_same_shape(y, "y", dy, "grad_y");
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dx = empty<T>({dy.shape(0), dy.shape(1)});
    py::gil_scoped_release nogil;
    (Log ? log_softmax_backward<T> : softmax_backward<T>)(ptr<T>(dx), ptr<T>(dy), ptr<T>(y), dy.shape(0), dy.shape(1));
    return dx;
  });
}

#if FUSEPROP_CUDA_COMPILED
// x: any shape, elementwise -> y
py::array cuda_activation_forward_entry(const py::handle& x_obj, const std::string& activation, double slope) {
  require_f32(x_obj, "x");
  py::array x = float_input(x_obj, "x");
  const Activation act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  py::array y(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer dx = to_device(x), dy(size_t(y.nbytes()));
    cuda::activation_forward(dy.as<float>(), dx.as<float>(), x.size(), act, float(slope));
    dy.copy_to_host(ptr<void>(y));
  }
  return y;
}

// grad_y, x, y: same shape -> grad_x
py::array cuda_activation_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& y_obj,
                                         const std::string& activation, double slope) {
  require_f32(dy_obj, "grad_y");
  py::array dy = float_input(dy_obj, "grad_y");
  py::array x = float_input_like(x_obj, "x", DType::f32, "grad_y");
  py::array y = float_input_like(y_obj, "y", DType::f32, "grad_y");
  check_same_shape(x, "x", dy, "grad_y");
  check_same_shape(y, "y", dy, "grad_y");
  const Activation act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  py::array dx(dy.dtype(), std::vector<py::ssize_t>(dy.shape(), dy.shape() + dy.ndim()));
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(dy), d_x = to_device(x), d_y = to_device(y), d_dx(size_t(dx.nbytes()));
    cuda::activation_backward(d_dx.as<float>(), d_dy.as<float>(), d_x.as<float>(), d_y.as<float>(), dy.size(), act,
                              float(slope));
    d_dx.copy_to_host(ptr<void>(dx));
  }
  return dx;
}
#endif

}  // namespace

void bind_activations(py::module_& m) {
  m.def("activation_forward", &activation_forward_entry, "x"_a, "activation"_a, "negative_slope"_a = 0.01);
  m.def("activation_backward", &activation_backward_entry, "grad_y"_a, "x"_a, "y"_a, "activation"_a, "negative_slope"_a = 0.01);
  m.def("softmax_forward", &softmax_forward_entry<false>, "x"_a);
  m.def("softmax_backward", &softmax_backward_entry<false>, "grad_y"_a, "y"_a);
  m.def("log_softmax_forward", &softmax_forward_entry<true>, "x"_a);
  m.def("log_softmax_backward", &softmax_backward_entry<true>, "grad_y"_a, "y"_a);
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_activation_forward", &cuda_activation_forward_entry, "x"_a, "activation"_a, "negative_slope"_a = 0.01);
  m.def("cuda_activation_backward", &cuda_activation_backward_entry, "grad_y"_a, "x"_a, "y"_a, "activation"_a,
        "negative_slope"_a = 0.01);
#endif
}

}  // namespace fuseprop::bindings
