// The whole training step of a chain of dense layers on the device, as csrc/plan/network.h does it on the
// CPU: forward, loss value and gradient, backward (writing the gradients), the finiteness checks,
// clipping by the global norm, and the optimizer update, queued back to back on the default stream.
// The host waits once per step, at the end, to read the loss and the flags (cuda/plan/step_checks.h): no
// layer's data crosses to the host. Plain C++ (no CUDA types); every pointer is device memory.
#pragma once

#include <cstdint>
#include <vector>

#include "plan/network.h"  // DenseLayer, ParamSlot, LossSpec, OptimizerKind, StepResult: the CPU plan's types
#include "cuda/plan/fused_mlp.h"
#include "cuda/core/memory.h"

namespace fuseprop::cuda {

class TrainPlan {
 public:
  // As fuseprop::TrainPlan (csrc/plan/network.h), float32. tf32: the GEMMs run on tensor cores in TF32.
  // allow_fused: cross-entropy steps of a narrow network (cuda/plan/fused_mlp.h) run as one fused kernel.
  TrainPlan(std::vector<DenseLayer<float>> layers, std::vector<ParamSlot<float>> params, LossSpec loss,
            OptimizerKind optimizer, bool tf32, bool allow_fused);

  // x (B, IN); labels (B) in [0, C) for cross-entropy (checked by the caller), else target (B, OUT); B >= 1.
  // The same contract as the CPU plan's step: a non-finite loss or gradient leaves the weights and the
  // optimizer state untouched (the update kernels see the device flag and do nothing).
  // Labels outside [0, C) refuse the step the same way: bad_label() gives the first such row.
  StepResult step(const float* x, const int64_t* labels, const float* target, int64_t B, double max_grad_norm);
  uint64_t bad_label() const { return bad_label_; }  // after step(): that row, or UINT64_MAX

  // out (B, OUT) = the network applied to x (B, IN); the hidden layers live in the plan's workspace.
  void forward(float* out, const float* x, int64_t B);

  std::vector<ParamSlot<float>>& params() { return params_; }
  bool fused() const { return fused_; }  // steps run the fused narrow-MLP kernel (cuda/plan/fused_mlp.h)
  int64_t capacity() const { return capacity_; }
  int64_t allocations() const { return allocations_; }
  int64_t steps() const { return steps_; }

 private:
  struct Buffers {
    float* z;
    float* y;
    float* dy;
  };
  Buffers buffers(size_t i, int64_t B) const;
  void reserve(int64_t B);         // what every step needs
  void reserve_layers(int64_t B);  // the layer-by-layer buffers (unfused steps, forward)

  std::vector<DenseLayer<float>> layers_;
  std::vector<ParamSlot<float>> params_;
  LossSpec loss_;
  OptimizerKind optimizer_;
  bool tf32_;
  bool fused_ = false;
  PlanLayout layout_;     // the CPU plan's, in floats
  DeviceBuffer floats_;   // layer_capacity_ * layout_.row_elements floats
  DeviceBuffer doubles_;  // row losses (capacity_), partial sums, per-parameter squared norms
  DeviceBuffer flags_;    // one StepFlags
  DeviceBuffer labels_;   // capacity_ checked labels (cuda/plan/step_checks.h)
  DeviceBuffer fused_workspace_;
  std::vector<FusedLayer> fused_layers_;
  int64_t capacity_ = 0, layer_capacity_ = 0, allocations_ = 0, steps_ = 0;
  uint64_t bad_label_ = ~0ull;
};

}  // namespace fuseprop::cuda
