// sgd_step and adam_step (CPU), cuda_sgd_step and cuda_adam_step: one set of checks for both.
#include <cmath>

#include "python/bind.h"
#include "python/checks.h"
#include "ops/optim.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/ops/optim_cuda.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// The checks of one SGD step, shared by the CPU and CUDA entries: param, grad, momentum_buffer (when
// momentum != 0) of one shape and dtype; param and momentum_buffer updated in place.
struct SgdArrays {
  DType dt;
  py::array param, grad;
  std::optional<py::array> buf;
};
SgdArrays checked_sgd_args(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& buf_obj, double lr,
                           double momentum, double dampening, bool nesterov, double weight_decay, int64_t step) {
  SgdArrays r;
  r.param = float_input(param_obj, "param", &r.dt);
  check_writeable(r.param, "param");
  r.grad = float_input_like(grad_obj, "grad", r.dt, "param");
  check_same_shape(r.grad, "grad", r.param, "param");
  check_no_overlap(r.param, "param", r.grad, "grad");
  check_range(lr, "lr", 0.0, INFINITY, false);
  check_range(momentum, "momentum", 0.0, INFINITY, false);
  check_range(dampening, "dampening", 0.0, INFINITY, false);
  check_range(weight_decay, "weight_decay", 0.0, INFINITY, false);
  if (step < 1) throw py::value_error(cat("step must be >= 1 (it counts this update), got ", step));
  if (nesterov && (momentum <= 0 || dampening != 0))
    throw py::value_error("nesterov momentum requires momentum > 0 and dampening == 0");
  if (momentum != 0) {
    if (buf_obj.is_none()) throw py::value_error("momentum_buffer is required when momentum != 0");
    r.buf = float_inout_like(buf_obj, "momentum_buffer", r.dt, "param");
    check_same_shape(*r.buf, "momentum_buffer", r.param, "param");
    check_no_overlap(*r.buf, "momentum_buffer", r.param, "param");
    check_no_overlap(*r.buf, "momentum_buffer", r.grad, "grad");
  }
  return r;
}

void sgd_step_entry(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& buf_obj, double lr,
                    double momentum, double dampening, bool nesterov, double weight_decay, int64_t step) {
  const SgdArrays r = checked_sgd_args(param_obj, grad_obj, buf_obj, lr, momentum, dampening, nesterov, weight_decay, step);
  dispatch(r.dt, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release nogil;
    sgd_step<T>(ptr<T>(r.param), ptr_or_null<T>(r.buf), ptr<T>(r.grad), r.param.size(), T(lr), T(momentum), T(dampening),
                nesterov, T(weight_decay), step == 1);
  });
}

// The checks of one Adam step, shared by the CPU and CUDA entries: param, grad, exp_avg, exp_avg_sq of
// one shape and dtype, no two sharing memory; all but grad updated in place.
struct AdamArrays {
  DType dt;
  py::array param, grad, m, v;
};
AdamArrays checked_adam_args(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& m_obj,
                             const py::handle& v_obj, int64_t step, double lr, double beta1, double beta2, double eps,
                             double weight_decay) {
  AdamArrays r;
  r.param = float_input(param_obj, "param", &r.dt);
  check_writeable(r.param, "param");
  r.grad = float_input_like(grad_obj, "grad", r.dt, "param");
  r.m = float_inout_like(m_obj, "exp_avg", r.dt, "param");
  r.v = float_inout_like(v_obj, "exp_avg_sq", r.dt, "param");
  check_same_shape(r.grad, "grad", r.param, "param");
  check_same_shape(r.m, "exp_avg", r.param, "param");
  check_same_shape(r.v, "exp_avg_sq", r.param, "param");
  const std::pair<const py::array*, const char*> args[] = {{&r.param, "param"}, {&r.grad, "grad"}, {&r.m, "exp_avg"}, {&r.v, "exp_avg_sq"}};
  for (size_t i = 0; i < 4; ++i)
    for (size_t j = i + 1; j < 4; ++j) check_no_overlap(*args[i].first, args[i].second, *args[j].first, args[j].second);
  if (step < 1) throw py::value_error(cat("step must be >= 1 (it counts this update), got ", step));
  check_range(lr, "lr", 0.0, INFINITY, false);
  check_range(beta1, "beta1", 0.0, 1.0, false);
  check_range(beta2, "beta2", 0.0, 1.0, false);
  check_range(eps, "eps", 0.0, INFINITY, false);
  check_range(weight_decay, "weight_decay", 0.0, INFINITY, false);
  return r;
}

void adam_step_entry(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& m_obj, const py::handle& v_obj,
                     int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled) {
  const AdamArrays r = checked_adam_args(param_obj, grad_obj, m_obj, v_obj, step, lr, beta1, beta2, eps, weight_decay);
  dispatch(r.dt, [&](auto tag) {
    using T = decltype(tag);
    py::gil_scoped_release nogil;
    adam_step<T>(ptr<T>(r.param), ptr<T>(r.m), ptr<T>(r.v), ptr<T>(r.grad), r.param.size(), T(lr), T(beta1), T(beta2),
                 T(eps), T(weight_decay), decoupled, step);
  });
}

#if FUSEPROP_CUDA_COMPILED
// param, grad, momentum_buffer: same shape; param and momentum_buffer updated in place
void cuda_sgd_step_entry(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& buf_obj, double lr,
                         double momentum, double dampening, bool nesterov, double weight_decay, int64_t step) {
  require_f32(param_obj, "param");
  const SgdArrays r = checked_sgd_args(param_obj, grad_obj, buf_obj, lr, momentum, dampening, nesterov, weight_decay, step);
  require_device();
  py::gil_scoped_release nogil;
  const cuda::DeviceBuffer d_param = to_device(r.param), d_grad = to_device(r.grad),
                           d_buf = r.buf ? to_device(*r.buf) : cuda::DeviceBuffer();
  cuda::sgd_step(d_param.as<float>(), r.buf ? d_buf.as<float>() : nullptr, d_grad.as<float>(), r.param.size(), float(lr),
                 float(momentum), float(dampening), nesterov, float(weight_decay), step == 1);
  d_param.copy_to_host(ptr<void>(r.param));
  if (r.buf) d_buf.copy_to_host(ptr<void>(*r.buf));
}

// param, grad, exp_avg, exp_avg_sq: same shape; all but grad updated in place
void cuda_adam_step_entry(const py::handle& param_obj, const py::handle& grad_obj, const py::handle& m_obj,
                          const py::handle& v_obj, int64_t step, double lr, double beta1, double beta2, double eps,
                          double weight_decay, bool decoupled) {
  require_f32(param_obj, "param");
  const AdamArrays r = checked_adam_args(param_obj, grad_obj, m_obj, v_obj, step, lr, beta1, beta2, eps, weight_decay);
  require_device();
  py::gil_scoped_release nogil;
  const cuda::DeviceBuffer d_param = to_device(r.param), d_grad = to_device(r.grad), d_m = to_device(r.m),
                           d_v = to_device(r.v);
  cuda::adam_step(d_param.as<float>(), d_m.as<float>(), d_v.as<float>(), d_grad.as<float>(), r.param.size(), float(lr),
                  float(beta1), float(beta2), float(eps), float(weight_decay), decoupled, step);
  d_param.copy_to_host(ptr<void>(r.param));
  d_m.copy_to_host(ptr<void>(r.m));
  d_v.copy_to_host(ptr<void>(r.v));
}
#endif

}  // namespace

void bind_optim(py::module_& m) {
  m.def("sgd_step", &sgd_step_entry, "param"_a, "grad"_a, "momentum_buffer"_a = py::none(), py::kw_only(), "lr"_a,
        "momentum"_a = 0.0, "dampening"_a = 0.0, "nesterov"_a = false, "weight_decay"_a = 0.0, "step"_a = 1);
  m.def("adam_step", &adam_step_entry, "param"_a, "grad"_a, "exp_avg"_a, "exp_avg_sq"_a, py::kw_only(), "step"_a,
        "lr"_a = 1e-3, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8, "weight_decay"_a = 0.0,
        "decoupled_weight_decay"_a = false);
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_sgd_step", &cuda_sgd_step_entry, "param"_a, "grad"_a, "momentum_buffer"_a = py::none(), py::kw_only(), "lr"_a,
        "momentum"_a = 0.0, "dampening"_a = 0.0, "nesterov"_a = false, "weight_decay"_a = 0.0, "step"_a = 1);
  m.def("cuda_adam_step", &cuda_adam_step_entry, "param"_a, "grad"_a, "exp_avg"_a, "exp_avg_sq"_a, py::kw_only(), "step"_a,
        "lr"_a = 1e-3, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8, "weight_decay"_a = 0.0,
        "decoupled_weight_decay"_a = false);
#endif
}

}  // namespace fuseprop::bindings
