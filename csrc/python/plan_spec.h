// What TrainPlan and CudaTrainPlan (bind_plan.cpp) share: the protocol they are built with (PlanSpec,
// parsed once for both), the hyper-parameters and step counts a step takes, and how a refused step is
// reported.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "plan/network.h"
#include "python/checks.h"

namespace fuseprop::bindings {

template <typename Kind, size_t N>
Kind lookup_kind(const std::pair<const char*, Kind> (&table)[N], const std::string& name, const char* what) {
  std::string names;
  for (const auto& [n, k] : table) {
    if (name == n) return k;
    names += cat(names.empty() ? "" : ", ", "'", n, "'");
  }
  throw py::value_error(cat(what, " must be one of ", names, "; got '", name, "'"));
}

// hyper: one tuple per param group, (lr, momentum, dampening, nesterov, weight_decay) for SGD,
// (lr, beta1, beta2, eps, weight_decay) for Adam / AdamW; every value checked.
std::vector<OptimizerHyper> parse_hyper(const py::sequence& hyper, int64_t groups, bool sgd);

// steps: one count per parameter (SGD: 1 on the momentum buffer's first update, else 2; Adam: this
// update's number, from 1). Every count is checked before any slot is written.
template <typename T>
void apply_hyper(std::vector<ParamSlot<T>>& slots, const py::sequence& steps, const std::vector<std::string>& names,
                 const std::vector<int64_t>& slot_group, const std::vector<OptimizerHyper>& group_hyper, bool sgd) {
  if (py::len(steps) != names.size()) throw py::value_error(cat("steps must have one count per parameter (", names.size(), "), got ", py::len(steps)));
  std::vector<int64_t> counts;
  for (size_t s = 0; s < slots.size(); ++s) {
    const int64_t step = steps[s].cast<int64_t>();
    if (step < 1) throw py::value_error(cat("steps[", s, "] (", names[s], ") must be >= 1, got ", step));
    const OptimizerHyper& h = group_hyper[size_t(slot_group[s])];
    if (sgd && h.momentum != 0 && !slots[s].state_a)
      throw py::value_error(cat(names[s], " has no momentum_buffer, but its group's momentum is ", h.momentum));
    counts.push_back(step);
  }
  for (size_t s = 0; s < slots.size(); ++s) {
    slots[s].hyper = group_hyper[size_t(slot_group[s])];
    slots[s].step = counts[s];
  }
}

struct PlanKinds {
  LossKind loss;
  OptimizerKind optimizer;
  bool mean;  // reduction "mean" (else "sum")
};

// The settings a TrainPlan (CPU or CUDA) is built with, each checked.
PlanKinds parse_plan_kinds(const py::sequence& layers, const std::string& loss, const std::string& optimizer,
                           double label_smoothing, const std::string& reduction, int64_t groups);

struct LayerEntry {
  Activation act;
  double slope;
  bool has_bias;
};

// One entry of a TrainPlan's layers: (activation, negative_slope, has_bias).
LayerEntry parse_layer_entry(const py::handle& item);

// A refused or overflowed step as Sequential.train_step reports it; nothing for StepStatus::ok.
void raise_for_status(const StepResult& result, const std::vector<std::string>& names);

// The protocol TrainPlan and CudaTrainPlan are built with, parsed once for both:
//   layers [(activation, negative_slope, has_bias)], one per Linear layer, in order;
//   params [(name, data, grad, state_a, state_b, group)] in the model's order: each layer's weight (OUT,IN),
//     then its bias (OUT,) when it has one. state_a: SGD's momentum_buffer (None without momentum) or
//     Adam's exp_avg; state_b: Adam's exp_avg_sq (None for SGD); group in [0, groups).
// parse_plan_spec checks every entry, in order, and hands each backend's arrays (numpy arrays for
// TrainPlan, DeviceArrays for CudaTrainPlan) to its Arrays, which checks them as that backend needs:
//   param(name, data, grad)          one parameter's data and grad: type, dtype, layout, writeable, one shape
//   state(which, state_name, obj)    its state_a (0) or state_b (1), given (not None): as data
//   check_no_overlap()               no two of the arrays above share memory
//   check_weight(slot, name)         a weight: 2-D, at least one row and one column
//   shape(slot)                      the shape of a parameter's data
struct PlanSpec {
  struct Layer {
    Activation act;
    double slope;
    size_t weight;               // its weight's slot (params' index)
    std::optional<size_t> bias;  // its bias's slot
    int64_t in, out;
  };
  LossKind loss = LossKind::cross_entropy;
  OptimizerKind optimizer = OptimizerKind::sgd;
  LossSpec loss_spec{};
  int64_t groups = 1;
  std::vector<Layer> layers;
  std::vector<std::string> names;      // per parameter, for messages
  std::vector<int64_t> slot_group;     // per parameter, its param group
  std::vector<py::object> keep_alive;  // every array the plan points into
  int64_t in_features = 0, out_features = 0;
  bool sgd() const { return optimizer == OptimizerKind::sgd; }
};

template <typename Arrays>
PlanSpec parse_plan_spec(const py::sequence& layers, const py::sequence& params, const std::string& loss,
                         const std::string& optimizer, double label_smoothing, const std::string& reduction,
                         int64_t groups, Arrays& arrays) {
  PlanSpec s;
  const PlanKinds kinds = parse_plan_kinds(layers, loss, optimizer, label_smoothing, reduction, groups);
  s.loss = kinds.loss;
  s.optimizer = kinds.optimizer;
  s.loss_spec = LossSpec{kinds.loss, label_smoothing, kinds.mean};
  s.groups = groups;

  const bool adam = !s.sgd();
  for (const py::handle item : params) {
    const py::tuple entry = py::reinterpret_borrow<py::object>(item).cast<py::tuple>();
    if (entry.size() != 6) throw py::value_error("each params entry must be (name, data, grad, state_a, state_b, group)");
    const std::string name = entry[0].cast<std::string>();
    arrays.param(name, entry[1], entry[2]);
    auto state = [&](int which, const py::handle obj, const char* key, bool required) {
      const std::string state_name = cat("state '", key, "' of ", name);
      if (obj.is_none()) {
        if (required) throw py::value_error(cat(state_name, " is required"));
        return;
      }
      arrays.state(which, state_name, obj);
    };
    state(0, entry[3], adam ? "exp_avg" : "momentum_buffer", adam);
    if (!adam && !entry[4].is_none()) throw py::value_error(cat("SGD keeps one state array per parameter: state_b of ", name, " must be None"));
    state(1, entry[4], "exp_avg_sq", adam);
    const int64_t group = entry[5].cast<int64_t>();
    if (group < 0 || group >= groups) throw py::value_error(cat("the group of ", name, " must be in [0, ", groups, "), got ", group));
    s.names.push_back(name);
    s.slot_group.push_back(group);
    for (int k = 1; k <= 4; ++k) s.keep_alive.push_back(entry[k]);
  }
  arrays.check_no_overlap();

  // Each layer takes the next weight (OUT,IN) whose IN is the OUT before, then its bias (OUT,).
  const size_t n = s.names.size();
  size_t next = 0;
  for (const py::handle item : layers) {
    const LayerEntry layer = parse_layer_entry(item);
    if (next + (layer.has_bias ? 2 : 1) > n)
      throw py::value_error(cat("params has ", n, " entries, fewer than the layers' weights and biases"));
    const size_t w = next++;
    arrays.check_weight(w, s.names[w]);
    const std::vector<int64_t> ws = arrays.shape(w);
    if (!s.layers.empty() && ws[1] != s.out_features)
      throw py::value_error(cat(s.names[w], " has shape ", dims_str(ws), ": its in_features must be ", s.out_features,
                                ", the out_features of the layer before"));
    if (s.layers.empty()) s.in_features = ws[1];
    s.out_features = ws[0];
    std::optional<size_t> bias;
    if (layer.has_bias) {
      bias = next++;
      const std::vector<int64_t> bs = arrays.shape(*bias);
      if (bs != std::vector<int64_t>{s.out_features})
        throw py::value_error(cat(s.names[*bias], " must have shape ", dims_str({s.out_features}), ", got ", dims_str(bs)));
    }
    s.layers.push_back({layer.act, layer.slope, w, bias, ws[1], ws[0]});
  }
  if (next != n) throw py::value_error(cat("params has ", n, " entries; the layers take ", next));
  return s;
}

// A plan's layers over its parameter slots (the pointers each backend's arrays gave).
template <typename T>
std::vector<DenseLayer<T>> dense_layers(const PlanSpec& s, const std::vector<ParamSlot<T>>& slots) {
  std::vector<DenseLayer<T>> dense;
  for (const PlanSpec::Layer& l : s.layers) {
    const ParamSlot<T>& w = slots[l.weight];
    dense.push_back({w.param, l.bias ? slots[*l.bias].param : nullptr, w.grad, l.bias ? slots[*l.bias].grad : nullptr,
                     l.in, l.out, l.act, T(l.slope)});
  }
  return dense;
}

// hyper and steps (see parse_hyper, apply_hyper) into the plan's slots, everything checked first.
template <typename T>
void set_hyper(std::vector<ParamSlot<T>>& slots, const PlanSpec& s, const py::sequence& hyper, const py::sequence& steps) {
  const std::vector<OptimizerHyper> group_hyper = parse_hyper(hyper, s.groups, s.sgd());
  apply_hyper(slots, steps, s.names, s.slot_group, group_hyper, s.sgd());
}

// What a step leaves for the properties both plans have, and the guard against two steps at once.
struct StepState {
  bool busy = false;     // a step runs (without the GIL): a second one must not start
  bool updated = false;  // the last step wrote the update (it may have raised after it)
  double grad_norm = 0;  // the last clipped step's global gradient norm, before clipping
  int64_t correct = 0;   // cross-entropy: the last step's rows predicted right (argmax == label)
  void record(const StepResult& r) {
    updated = r.status == StepStatus::ok || r.status == StepStatus::param_not_finite;
    correct = r.correct;
    grad_norm = r.grad_norm;
  }
};

}  // namespace fuseprop::bindings
