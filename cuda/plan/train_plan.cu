#include "cuda/plan/train_plan.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <utility>

#include "cuda/ops/losses_cuda.h"
#include "cuda/ops/matmul_cuda.h"
#include "cuda/ops/optim_cuda.h"
#include "cuda/plan/step_checks.h"

namespace fuseprop::cuda {

namespace {

// The doubles workspace: [0, B) row losses, then the partial sums, then one squared norm per parameter.
int64_t doubles_for(int64_t B, size_t n_params) {
  return B + std::max<int64_t>(kMaxPartials, kLossPartials) + int64_t(n_params);
}

}  // namespace

TrainPlan::TrainPlan(std::vector<DenseLayer<float>> layers, std::vector<ParamSlot<float>> params, LossSpec loss,
                     OptimizerKind optimizer, bool tf32, bool allow_fused)
    : layers_(std::move(layers)), params_(std::move(params)), loss_(loss), optimizer_(optimizer), tf32_(tf32),
      flags_(sizeof(StepFlags)) {
  if (layers_.empty()) throw std::invalid_argument("a CUDA TrainPlan needs at least one layer");
  for (const auto& l : layers_) fused_layers_.push_back({l.w, l.b, l.dw, l.db, l.in, l.out, l.act, l.slope});
  fused_ = allow_fused && loss_.kind == LossKind::cross_entropy &&
           fused_mlp_supported(fused_layers_.data(), int(fused_layers_.size()));
  layout_ = plan_layout(layers_);
}

TrainPlan::Buffers TrainPlan::buffers(size_t i, int64_t B) const {
  float* base = floats_.as<float>();
  return {base + B * layout_.z_at[i], base + B * layout_.y_at[i], base + B * layout_.dy_at[i]};
}

void TrainPlan::reserve(int64_t B) {
  if (B <= capacity_) return;
  doubles_ = DeviceBuffer();  // free first: the old and new workspace need not fit together
  labels_ = DeviceBuffer();
  fused_workspace_ = DeviceBuffer();
  doubles_ = DeviceBuffer(size_t(doubles_for(B, params_.size())) * sizeof(double));
  labels_ = DeviceBuffer(size_t(B) * sizeof(int64_t));
  // The fused kernel keeps its activations in its own workspace; the layer buffers wait for reserve_layers.
  if (fused_) fused_workspace_ = DeviceBuffer(fused_mlp_workspace_bytes(fused_layers_.data(), int(fused_layers_.size()), B));
  capacity_ = B;
  ++allocations_;
}

void TrainPlan::reserve_layers(int64_t B) {
  if (B <= layer_capacity_) return;
  floats_ = DeviceBuffer();
  floats_ = DeviceBuffer(size_t(B * layout_.row_elements) * sizeof(float));
  layer_capacity_ = B;
  ++allocations_;
}

StepResult TrainPlan::step(const float* x, const int64_t* labels, const float* target, int64_t B,
                           double max_grad_norm) {
  reserve(B);
  ++steps_;
  const size_t L = layers_.size();
  StepFlags* flags = flags_.as<StepFlags>();
  double* row_loss = doubles_.as<double>();
  double* partial = row_loss + capacity_;
  double* norms = partial + std::max<int64_t>(kMaxPartials, kLossPartials);
  reset_flags(flags);

  const int64_t C = layers_[L - 1].out;
  const int64_t n = loss_.kind == LossKind::cross_entropy ? B : B * C;  // what "mean" divides by
  const float scale = loss_.mean ? float(1.0 / double(n)) : 1.f;
  const int64_t* clean = labels_.as<int64_t>();
  if (labels) check_labels(flags, labels_.as<int64_t>(), labels, B, C);

  if (fused_) {
    // Forward, loss and backward of the whole network in one kernel (and one fixed-order reduction).
    fused_mlp_forward_backward(&flags->loss_total, &flags->correct, fused_layers_.data(), int(L), x, clean, B,
                               float(loss_.label_smoothing), scale, fused_workspace_.as<void>(), tf32_);
  } else {
    reserve_layers(B);
    // Forward: y_i = act(y_{i-1} w_i^T + b_i), with y_{-1} = x; bias and activation in the GEMM's epilogue.
    const float* in = x;
    for (size_t i = 0; i < L; ++i) {
      const auto& l = layers_[i];
      const Buffers buf = buffers(i, B);
      linear_forward(buf.y, buf.z, in, l.w, l.b, B, l.in, l.out, l.act, l.slope, tf32_);
      in = buf.y;
    }
    // Loss value and gradient in one pass, into the last layer's dy.
    float* dout = buffers(L - 1, B).dy;
    switch (loss_.kind) {
      case LossKind::cross_entropy:
        count_correct(&flags->correct, in, clean, B, C);
        cross_entropy_forward_backward(&flags->loss_total, dout, row_loss, in, clean, B, C,
                                       float(loss_.label_smoothing), scale);
        break;
      case LossKind::mse:
        mse_forward_backward(&flags->loss_total, dout, partial, in, target, n, scale);
        break;
      case LossKind::bce_with_logits:
        count_binary_hits(&flags->correct, in, target, n);
        bce_with_logits_forward_backward(&flags->loss_total, dout, partial, in, target, n, scale);
        break;
    }
    // Backward: the kernels add into dw and db, so the gradients start from zero.
    for (const auto& p : params_) fill_zero(p.grad, size_t(p.n) * sizeof(float));
    float* dz = floats_.as<float>() + B * layout_.dz_at;
    for (size_t i = L; i-- > 0;) {
      const auto& l = layers_[i];
      const Buffers buf = buffers(i, B);
      const float* layer_in = i > 0 ? buffers(i - 1, B).y : x;
      float* dx = i > 0 ? buffers(i - 1, B).dy : nullptr;
      linear_backward(dx, l.dw, l.db, dz, buf.dy, layer_in, l.w, buf.z, buf.y, B, l.in, l.out, l.act, l.slope, tf32_);
    }
  }
  // A bad label, a non-finite loss or gradient: the update kernels below see skip and do nothing.
  flag_nonfinite_loss(flags);
  for (size_t s = 0; s < params_.size(); ++s) flag_nonfinite(flags, params_[s].grad, params_[s].n, int32_t(s), false);

  // Clipping by the global norm: squared norms per parameter, summed in slot order, then one scaling pass.
  if (max_grad_norm > 0) {
    for (size_t s = 0; s < params_.size(); ++s) sum_squares(norms + s, partial, params_[s].grad, params_[s].n);
    write_grad_norm(flags, norms, int(params_.size()));
    for (const auto& p : params_) clip_by_norm(p.grad, p.n, flags, max_grad_norm);
  }

  // The update, skipped on the device when a flag says so; then which parameter it made non-finite.
  const int32_t* skip = &flags->skip;
  for (auto& p : params_) {
    const OptimizerHyper& h = p.hyper;
    if (optimizer_ == OptimizerKind::sgd) {
      sgd_step(p.param, p.state_a, p.grad, p.n, float(h.lr), float(h.momentum), float(h.dampening), h.nesterov,
               float(h.weight_decay), p.step == 1, skip);
    } else {
      adam_step(p.param, p.state_a, p.state_b, p.grad, p.n, float(h.lr), float(h.beta1), float(h.beta2), float(h.eps),
                float(h.weight_decay), optimizer_ == OptimizerKind::adamw, p.step, skip);
    }
  }
  for (size_t s = 0; s < params_.size(); ++s) flag_nonfinite(flags, params_[s].param, params_[s].n, int32_t(s), true);

  StepFlags f;
  copy_to_host(&f, flags, sizeof f);  // the step's one wait
  bad_label_ = f.bad_label;
  const double loss = loss_.mean ? f.loss_total / double(n) : f.loss_total;
  const double norm = max_grad_norm > 0 ? f.grad_norm : 0;
  if (!std::isfinite(loss)) return {StepStatus::loss_not_finite, loss, 0, f.correct, -1};
  if (f.bad_grad != INT_MAX) return {StepStatus::grad_not_finite, loss, 0, f.correct, f.bad_grad};
  if (f.bad_param != INT_MAX) return {StepStatus::param_not_finite, loss, norm, f.correct, f.bad_param};
  return {StepStatus::ok, loss, norm, f.correct, -1};
}

void TrainPlan::forward(float* out, const float* x, int64_t B) {
  if (B == 0) return;
  reserve_layers(B);
  const float* in = x;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& l = layers_[i];
    const Buffers buf = buffers(i, B);
    const bool last = i + 1 == layers_.size();
    float* y = last ? out : buf.y;
    float* z = last && l.act == Activation::identity ? out : buf.z;
    linear_forward(y, z, in, l.w, l.b, B, l.in, l.out, l.act, l.slope, tf32_);
    in = y;
  }
}

}  // namespace fuseprop::cuda
