// The whole training step of a chain of dense layers in one call: forward, loss value and gradient,
// backward (writing the gradients, so they need no zeroing pass), optimizer update. The plan keeps raw pointers into arrays it does not
// own (parameters, gradients, optimizer state: the caller keeps them alive and unmoved) and owns one
// workspace, sized for the largest batch seen so far: a step with a batch no larger than that
// allocates nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/common.h"

namespace fuseprop {

enum class LossKind : int { cross_entropy = 0, mse, bce_with_logits };
enum class OptimizerKind : int { sgd = 0, adam, adamw };

// One Linear layer and the activation after it: w (OUT,IN), b (OUT) or null; dw, db the same shapes.
template <typename T>
struct DenseLayer {
  T* w;
  T* b;
  T* dw;
  T* db;
  int64_t in, out;
  Activation act;
  T slope;
};

// The hyper-parameters of one parameter's update; set before every step (schedules, param groups).
struct OptimizerHyper {
  double lr = 0, weight_decay = 0;
  double momentum = 0, dampening = 0;  // SGD
  bool nesterov = false;               // SGD
  double beta1 = 0, beta2 = 0, eps = 0;  // Adam, AdamW
};

// One parameter tensor: param, grad, state (n). state_a is SGD's momentum_buffer (null without momentum)
// or Adam's exp_avg; state_b is Adam's exp_avg_sq (null for SGD).
template <typename T>
struct ParamSlot {
  T* param;
  T* grad;
  T* state_a;
  T* state_b;
  int64_t n;
  OptimizerHyper hyper;
  int64_t step;  // SGD: 1 on the momentum buffer's first update; Adam: counts this update, from 1
};

// Where a plan keeps each layer's activations and gradients for a batch of B rows, in elements per
// row (layer i's z starts at B * z_at[i], and so on): z, y (unless the identity, whose y is its z) and
// dy of every layer, then one dz (the widest layer's) that every backward call shares. The CPU plan
// and the CUDA plan (cuda/plan/train_plan.h) lay out their workspaces with it.
struct PlanLayout {
  std::vector<int64_t> z_at, y_at, dy_at;  // per layer
  int64_t dz_at = 0;
  int64_t row_elements = 0;  // the workspace's elements per batch row
};

template <typename T>
PlanLayout plan_layout(const std::vector<DenseLayer<T>>& layers) {
  PlanLayout p;
  int64_t at = 0, widest = 0;
  for (const auto& L : layers) {
    p.z_at.push_back(at);
    at += L.out;
    p.y_at.push_back(L.act == Activation::identity ? p.z_at.back() : at);
    if (L.act != Activation::identity) at += L.out;
    p.dy_at.push_back(at);
    at += L.out;
    widest = L.out > widest ? L.out : widest;
  }
  p.dz_at = at;
  p.row_elements = at + widest;
  return p;
}

struct LossSpec {
  LossKind kind;
  double label_smoothing;  // cross-entropy only
  bool mean;               // "mean" (else "sum")
};

enum class StepStatus : int { ok = 0, loss_not_finite, grad_not_finite, param_not_finite };

struct StepResult {
  StepStatus status;
  double loss;   // reduced as LossSpec says
  double grad_norm;  // the L2 norm of all gradients together, before clipping (computed only when clipping)
  int64_t correct;  // cross-entropy: rows whose first largest logit is at the label (as numpy's argmax);
                   // BCE with logits: elements whose logit's sign gives the target (binary_hit); MSE: 0
  int64_t slot;  // the first parameter whose gradient (grad_not_finite) or value (param_not_finite) is not finite
};

template <typename T>
class TrainPlan {
 public:
  // layers chain: layers[i].in == layers[i-1].out. params: the slots the optimizer updates (every
  // w and b of the layers, each once). Checked by the caller.
  TrainPlan(std::vector<DenseLayer<T>> layers, std::vector<ParamSlot<T>> params, LossSpec loss, OptimizerKind optimizer);

  // x (B, IN of layer 0); labels (B) in [0, C) for cross-entropy, else target (B, OUT of the last
  // layer): the other one is null. B >= 1. Hyper-parameters and step counts are read from params().
  // Safety, as Sequential.train_step: a non-finite loss or gradient stops the step before the update
  // (weights and optimizer state untouched, gradients untouched or partly written); a parameter that the
  // update made non-finite is reported after it (the weights are overwritten).
  // max_grad_norm > 0: before the update, every gradient is scaled by max_grad_norm / (norm + 1e-6) when
  // that is below 1, norm being the L2 norm of all gradients together (torch.nn.utils.clip_grad_norm_).
  StepResult step(const T* x, const int64_t* labels, const T* target, int64_t B, double max_grad_norm = 0);

  std::vector<ParamSlot<T>>& params() { return params_; }
  // The gradient of the last step's loss with respect to the last layer's output, (last_batch(), OUT).
  const T* loss_grad() const;
  int64_t out_features() const { return layers_.back().out; }
  // Workspace elements per batch row (for the caller's overflow check).
  int64_t row_elements() const { return layout_.row_elements; }
  int64_t last_batch() const { return last_batch_; }
  int64_t capacity() const { return capacity_; }
  int64_t allocations() const { return allocations_; }
  int64_t steps() const { return steps_; }

 private:
  // The activations and gradients of layer i for a batch of B rows: z, y, dy (B, OUT). y is z for
  // the identity, whose z and y are equal.
  struct Buffers {
    T* z;
    T* y;
    T* dy;
  };
  Buffers buffers(size_t i, int64_t B);
  void reserve(int64_t B);

  std::vector<DenseLayer<T>> layers_;
  std::vector<ParamSlot<T>> params_;
  LossSpec loss_;
  OptimizerKind optimizer_;
  PlanLayout layout_;
  std::vector<T> workspace_;
  int64_t capacity_ = 0, allocations_ = 0, steps_ = 0, last_batch_ = 0;
};

}  // namespace fuseprop
