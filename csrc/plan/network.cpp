#include "plan/network.h"

#include <atomic>
#include <cmath>
#include <utility>

#include "ops/elementwise_kernels.h"
#include "ops/linear.h"
#include "ops/loss_math.h"
#include "ops/losses.h"
#include "ops/optim.h"
#include "core/threads.h"

namespace fuseprop {

namespace {

// a (n): no NaN or Inf; large arrays are tested by all threads, each on its own chunks.
template <typename T>
bool all_finite(const T* a, int64_t n) {
  const ElementwiseKernels<T>& kern = elementwise_kernels(T{});
  std::atomic<bool> finite{true};
  parallel_for(n, 2, [&](int64_t begin, int64_t end) {
    if (kern.any_nonfinite(a + begin, end - begin)) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

// logits (B,C), labels (B): rows whose first largest logit is at the label (accuracy without a second forward)
template <typename T>
int64_t count_correct(const T* logits, const int64_t* labels, int64_t B, int64_t C) {
  int64_t correct = 0;
  for (int64_t r = 0; r < B; ++r) {
    const T* row = logits + r * C;
    int64_t best = 0;
    for (int64_t c = 1; c < C; ++c)
      if (row[c] > row[best]) best = c;
    correct += best == labels[r];
  }
  return correct;
}

// logits, target (n): elements whose logit's sign gives the target (binary_hit)
template <typename T>
int64_t count_binary_hits(const T* logits, const T* target, int64_t n) {
  int64_t hits = 0;
  for (int64_t i = 0; i < n; ++i) hits += binary_hit(logits[i], target[i]);
  return hits;
}

}  // namespace

template <typename T>
TrainPlan<T>::TrainPlan(std::vector<DenseLayer<T>> layers, std::vector<ParamSlot<T>> params, LossSpec loss,
                        OptimizerKind optimizer)
    : layers_(std::move(layers)), params_(std::move(params)), loss_(loss), optimizer_(optimizer),
      layout_(plan_layout(layers_)) {}

// z, y, dy of layer i (B, OUT)
template <typename T>
typename TrainPlan<T>::Buffers TrainPlan<T>::buffers(size_t i, int64_t B) {
  T* base = workspace_.data();
  return {base + B * layout_.z_at[i], base + B * layout_.y_at[i], base + B * layout_.dy_at[i]};
}

// The workspace grows to B rows when B exceeds the capacity; a smaller batch uses a prefix of it.
template <typename T>
void TrainPlan<T>::reserve(int64_t B) {
  if (B <= capacity_) return;
  workspace_ = std::vector<T>(static_cast<size_t>(B * layout_.row_elements));
  capacity_ = B;
  ++allocations_;
}

// (last_batch, OUT): written by the loss, read (never written) by the last layer's backward
template <typename T>
const T* TrainPlan<T>::loss_grad() const {
  const size_t last = layers_.size() - 1;
  return workspace_.data() + last_batch_ * layout_.dy_at[last];
}

// x (B, IN_0); labels (B) or target (B, OUT_last): one training step
template <typename T>
StepResult TrainPlan<T>::step(const T* x, const int64_t* labels, const T* target, int64_t B, double max_grad_norm) {
  reserve(B);
  last_batch_ = B;
  ++steps_;
  const size_t L = layers_.size();

  // Forward: y_i = act(y_{i-1} w_i^T + b_i), with y_{-1} = x.
  const T* in = x;
  for (size_t i = 0; i < L; ++i) {
    const auto& l = layers_[i];
    const Buffers buf = buffers(i, B);
    linear_forward<T>(buf.y, buf.z, in, l.w, l.b, B, l.in, l.out, l.act, l.slope);
    in = buf.y;
  }

  // Loss value and its gradient in one pass, written straight into the last layer's dy.
  const int64_t C = layers_[L - 1].out;
  T* dout = buffers(L - 1, B).dy;
  const int64_t n = loss_.kind == LossKind::cross_entropy ? B : B * C;  // what "mean" divides by
  const T scale = loss_.mean ? T(1.0 / double(n)) : T(1);
  double total = 0;
  int64_t correct = 0;
  switch (loss_.kind) {
    case LossKind::cross_entropy:
      correct = count_correct<T>(in, labels, B, C);
      total = cross_entropy_forward_backward<T>(dout, in, labels, B, C, T(loss_.label_smoothing), scale);
      break;
    case LossKind::mse:
      total = mse_forward_backward<T>(dout, in, target, n, scale);
      break;
    case LossKind::bce_with_logits:
      correct = count_binary_hits<T>(in, target, n);
      total = bce_with_logits_forward_backward<T>(dout, in, target, n, scale);
      break;
  }
  const double loss = loss_.mean ? total / double(n) : total;
  if (!std::isfinite(loss)) return {StepStatus::loss_not_finite, loss, 0, correct, -1};

  // Backward: dw_i += dz_i^T y_{i-1}, db_i += sum dz_i, dy_{i-1} = dz_i w_i; the first layer's dx is not needed.
  T* dz = workspace_.data() + B * layout_.dz_at;
  for (size_t i = L; i-- > 0;) {
    const auto& l = layers_[i];
    const Buffers buf = buffers(i, B);
    const T* layer_in = i > 0 ? buffers(i - 1, B).y : x;
    T* dx = i > 0 ? buffers(i - 1, B).dy : nullptr;
    // Writes (not adds) the gradients: the step's "zero the gradients" costs no pass of its own.
    linear_backward<T>(dx, l.dw, l.db, dz, buf.dy, layer_in, l.w, buf.z, buf.y, B, l.in, l.out, l.act, l.slope,
                       /*accumulate=*/false);
  }
  for (size_t s = 0; s < params_.size(); ++s)
    if (!all_finite(params_[s].grad, params_[s].n)) return {StepStatus::grad_not_finite, loss, 0, correct, int64_t(s)};

  // Clipping by the global norm: one pass to sum the squares (in double), one to scale, before the update.
  double grad_norm = 0;
  if (max_grad_norm > 0) {
    for (const auto& p : params_)
      for (int64_t i = 0; i < p.n; ++i) grad_norm += double(p.grad[i]) * double(p.grad[i]);
    grad_norm = std::sqrt(grad_norm);
    const double coef = max_grad_norm / (grad_norm + 1e-6);
    if (coef < 1)
      for (const auto& p : params_)
        for (int64_t i = 0; i < p.n; ++i) p.grad[i] *= T(coef);
  }

  // Update every parameter (each update tests what it writes), then report the first one made non-finite.
  int64_t first_nonfinite = -1;
  for (size_t s = 0; s < params_.size(); ++s) {
    ParamSlot<T>& p = params_[s];
    const OptimizerHyper& h = p.hyper;
    bool nonfinite;
    if (optimizer_ == OptimizerKind::sgd) {
      nonfinite = sgd_step<T>(p.param, p.state_a, p.grad, p.n, T(h.lr), T(h.momentum), T(h.dampening), h.nesterov,
                              T(h.weight_decay), p.step == 1);
    } else {
      nonfinite = adam_step<T>(p.param, p.state_a, p.state_b, p.grad, p.n, T(h.lr), T(h.beta1), T(h.beta2), T(h.eps),
                               T(h.weight_decay), optimizer_ == OptimizerKind::adamw, p.step);
    }
    if (nonfinite && first_nonfinite < 0) first_nonfinite = int64_t(s);
  }
  if (first_nonfinite >= 0) return {StepStatus::param_not_finite, loss, grad_norm, correct, first_nonfinite};
  return {StepStatus::ok, loss, grad_norm, correct, -1};
}

template class TrainPlan<float>;
template class TrainPlan<double>;

}  // namespace fuseprop
