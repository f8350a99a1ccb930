// The whole forward and backward pass of a narrow MLP (every layer at most 128 wide) in one kernel,
// with softmax cross-entropy from the logits and every weight gradient: plain C++ (no CUDA types).
// Pointers are device memory, float32, row-major. Unlike the op-by-op path (cuda/ops/matmul_cuda.h), the parameter
// gradients are WRITTEN (=), not accumulated: the fused pass produces the whole batch's gradient.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/common.h"

namespace fuseprop::cuda {

constexpr int kFusedMlpMaxWidth = 128;
constexpr int kFusedMlpMaxLayers = 8;

// One Linear layer and the activation after it; device pointers. w (OUT,IN) row-major as PyTorch, b (OUT) or null;
// dw, db the same shapes (db null when b is null). The last layer's act is identity (logits).
struct FusedLayer {
  const float* w;
  const float* b;
  float* dw;
  float* db;
  int64_t in, out;
  Activation act;
  float slope;
};

// Whether the fused kernel takes this network: 1..kFusedMlpMaxLayers layers, in >= 1, each in the out of the
// layer before, every out in [1, kFusedMlpMaxWidth], last act identity. Asks nothing of the device.
bool fused_mlp_supported(const FusedLayer* layers, int n_layers);

// Device workspace bytes for a batch of B rows (0 when B is 0). Depends on the current device (its number of
// multiprocessors sets the grid), so plan it on the device that runs the pass.
size_t fused_mlp_workspace_bytes(const FusedLayer* layers, int n_layers, int64_t B);

// x (B, layers[0].in), labels (B) in [0, C) (checked by the caller), C = layers[n-1].out.
// Forward through all layers, softmax cross-entropy with label smoothing (q = (1-eps) onehot + eps/C),
// dlogits = (softmax - q) * grad_scale (grad_scale = 1/B for "mean"), backward through all layers.
// Writes (=, not +=) every dw and db. loss_total (1 double, device): the UNREDUCED sum of row losses;
// correct (1 int64, device): rows whose first largest logit is at the label (as numpy argmax: a NaN wins).
// Deterministic: the same bits on every run on one device (no float atomics; per-block partial weight
// gradients are reduced in block order by a second kernel). Launches on the default stream; does not synchronise.
// tf32: the products on tensor cores (WMMA m16n16k8, inputs rounded to TF32, float accumulation); else FP32 FMA.
void fused_mlp_forward_backward(double* loss_total, int64_t* correct, const FusedLayer* layers, int n_layers,
                                const float* x, const int64_t* labels, int64_t B, float label_smoothing,
                                float grad_scale, void* workspace, bool tf32);

// Inference: logits (B, C) = the network's output; dw and db are not touched (may be null).
// workspace: fused_mlp_workspace_bytes(layers, n_layers, B) bytes.
void fused_mlp_forward(float* logits, const FusedLayer* layers, int n_layers, const float* x, int64_t B,
                       void* workspace, bool tf32);

}  // namespace fuseprop::cuda
