#include "python/plan_spec.h"

#include <cmath>

namespace fuseprop::bindings {

namespace {

[[noreturn]] void throw_floating_point(const std::string& message) {
  PyErr_SetString(PyExc_FloatingPointError, message.c_str());
  throw py::error_already_set();
}

double hyper_number(const py::handle& h, const char* name, int64_t group) {
  const double v = PyFloat_AsDouble(h.ptr());
  if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  if (!std::isfinite(v)) throw py::value_error(cat("param group ", group, ": ", name, " must be finite, got ", v));
  return v;
}

}  // namespace

std::vector<OptimizerHyper> parse_hyper(const py::sequence& hyper, int64_t groups, bool sgd) {
  if (int64_t(py::len(hyper)) != groups) throw py::value_error(cat("hyper must have one tuple per param group (", groups, "), got ", py::len(hyper)));
  std::vector<OptimizerHyper> out(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g) {
    const py::sequence t = hyper[size_t(g)].cast<py::sequence>();
    if (py::len(t) != 5) throw py::value_error(cat("hyper[", g, "] must have 5 entries, got ", py::len(t)));
    OptimizerHyper& h = out[size_t(g)];
    auto at_least_zero = [&](size_t i, const char* name, double hi = INFINITY) {
      const double v = hyper_number(t[i], name, g);
      if (v < 0 || v >= hi) throw py::value_error(cat("param group ", g, ": ", name, " must be in [0, ", hi, "), got ", v));
      return v;
    };
    h.lr = at_least_zero(0, "lr");
    h.weight_decay = at_least_zero(4, "weight_decay");
    if (sgd) {
      h.momentum = at_least_zero(1, "momentum");
      h.dampening = at_least_zero(2, "dampening");
      const int nesterov = PyObject_IsTrue(t[3].ptr());
      if (nesterov < 0) throw py::error_already_set();
      h.nesterov = nesterov == 1;
      if (h.nesterov && (h.momentum <= 0 || h.dampening != 0))
        throw py::value_error(cat("param group ", g, ": nesterov momentum requires momentum > 0 and dampening == 0"));
    } else {
      h.beta1 = at_least_zero(1, "beta1", 1.0);
      h.beta2 = at_least_zero(2, "beta2", 1.0);
      h.eps = at_least_zero(3, "eps");
    }
  }
  return out;
}

PlanKinds parse_plan_kinds(const py::sequence& layers, const std::string& loss, const std::string& optimizer,
                           double label_smoothing, const std::string& reduction, int64_t groups) {
  static const std::pair<const char*, LossKind> loss_kinds[] = {
      {"cross_entropy", LossKind::cross_entropy}, {"mse", LossKind::mse}, {"bce_with_logits", LossKind::bce_with_logits}};
  static const std::pair<const char*, OptimizerKind> optimizer_kinds[] = {
      {"sgd", OptimizerKind::sgd}, {"adam", OptimizerKind::adam}, {"adamw", OptimizerKind::adamw}};
  PlanKinds k{lookup_kind(loss_kinds, loss, "loss"), lookup_kind(optimizer_kinds, optimizer, "optimizer"), true};
  check_range(label_smoothing, "label_smoothing", 0.0, 1.0, true);
  k.mean = parse_reduction(reduction);
  if (groups < 1) throw py::value_error(cat("groups must be >= 1, got ", groups));
  if (py::len(layers) == 0) throw py::value_error("a TrainPlan needs at least one layer");
  return k;
}

LayerEntry parse_layer_entry(const py::handle& item) {
  const py::tuple layer = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
  if (layer.size() != 3) throw py::value_error("each layers entry must be (activation, negative_slope, has_bias)");
  LayerEntry e{parse_activation(layer[0].cast<std::string>()), layer[1].cast<double>(), layer[2].cast<bool>()};
  check_finite_scalar(e.slope, "negative_slope");
  return e;
}

void raise_for_status(const StepResult& result, const std::vector<std::string>& names) {
  switch (result.status) {
    case StepStatus::ok:
      return;
    case StepStatus::loss_not_finite:
      throw_floating_point(cat("the loss is ", py::repr(py::float_(result.loss)).cast<std::string>(),
                               "; the weights were not updated"));
    case StepStatus::grad_not_finite:
      throw_floating_point(cat("the gradient of ", names[result.slot], " is not finite; the weights were not updated"));
    case StepStatus::param_not_finite:
      throw_floating_point(cat("the optimizer update made ", names[result.slot], " non-finite (is the learning rate too "
                               "large?); the weights were overwritten: reload them from a checkpoint"));
  }
}

}  // namespace fuseprop::bindings
