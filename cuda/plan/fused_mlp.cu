// The fused MLP pass (fused_mlp.h). One persistent grid; block g takes the row tiles g, g + G, g + 2G, ...
// of kRows rows each and, per tile, runs every layer's forward, the loss, and every layer's backward:
//
//   forward   z_l (R,OUT) = a_{l-1} (R,IN) w_l^T + b_l;  a_l = y_l = act_l(z_l)      (a_{-1} is the x tile)
//   loss      dz_{n-1} = (softmax(z_{n-1}) - q) * grad_scale; row losses and argmax hits summed in row order
//   backward  db_l += column sums of dz_l;  dw_l += dz_l^T a_{l-1};  dz_{l-1} = (dz_l w_l) * act'_{l-1}(z_{l-1})
//
// Every product is one call of tile_gemm, a 128 x 128 output tile per block streamed through shared memory in
// K steps of BK, on TF32 tensor cores or in FP32 FMA. The activations z_l, y_l and the gradients dz of the
// tile live in the block's own slice of the workspace (global memory that stays in L2), so the shared memory
// is the GEMM's staging only (46 KB, static) whatever the depth. The block's dw and db for all its tiles are
// summed in its own slot of the workspace (its first tile writes, later ones add, in tile order), and a
// second kernel adds the G slots in block order: the same bits on every run, with no atomics.
#include "cuda/plan/fused_mlp.h"

#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>

#include "cuda/core/launch.cuh"
#include "cuda/core/warp.cuh"
#include "ops/activation_math.h"
#include "ops/loss_math.h"

namespace fuseprop::cuda {

namespace {

namespace wmma = nvcuda::wmma;

constexpr int kRows = 128;           // rows of x per tile
constexpr int kFusedThreads = 256;   // 8 warps
constexpr int kBlocksPerSm = 2;      // the grid: this many blocks per multiprocessor (launch bounds promise it)
constexpr int BM = 128, BN = 128, BK = 32;  // tile_gemm's output tile and K step; BM, BN >= kRows, kFusedMlpMaxWidth
constexpr int PAD = 4;               // floats of padding per shared row: spreads banks, keeps WMMA's 32-byte alignment
static_assert(BM >= kRows && BM >= kFusedMlpMaxWidth && BN >= kRows && BN >= kFusedMlpMaxWidth, "a product fits one tile");

// op(p) of a matrix p row-major with leading dimension ld: element (i, j) is p[j * ld + i] when trans, else p[i * ld + j].
struct Mat {
  const float* p;
  int64_t ld;
  bool trans;
};

// The shared memory of a block: 18432 + 16896 + 10240 + 1024 + 512 = 47104 bytes (< the 48 KB static limit).
// Every WMMA pointer below is a multiple of 32 bytes from the start: rows of as are 144 bytes and WMMA
// reads them 16 rows (2304 bytes) and 8 columns (32 bytes) apart; rows of bs are 528 bytes, read 8 rows
// (4224 bytes) and 16 columns (64 bytes) apart; each warp's scratch is 1280 bytes.
struct Smem {
  float as[BM][BK + PAD];              // op(a)[m0 : m0+BM, k0 : k0+BK]
  float bs[BK][BN + PAD];              // op(b)[k0 : k0+BK, 0 : BN]
  float scratch[kFusedThreads / 32][16][16 + PAD];  // one WMMA accumulator per warp, for the epilogue
  double row_loss[kRows];
  int row_hit[kRows];                  // 1 where the row's argmax is its label
};
static_assert(sizeof(Smem) == 47104, "the layout in the comment above");

// One layer as the kernel sees it, with where its pieces live in a block's slices of the workspace.
struct LayerArgs {
  const float* w;    // (out, in)
  const float* b;    // (out) or null
  float* dw;         // (out, in): the reduction writes it
  float* db;         // (out) or null
  int64_t in, out;
  Activation act;
  float slope;
  int64_t dw_off, db_off;  // in a gradient slot (floats): dw (out, in), db (out)
  int64_t z_off, y_off;    // in a scratch slice (floats): z, y (kRows, out), ld = out; y_off == z_off for identity
};

struct NetArgs {
  LayerArgs layer[kFusedMlpMaxLayers];
  int n;
  const float* x;          // (B, layer[0].in)
  const int64_t* labels;   // (B), training only
  float* logits;           // (B, C), inference only
  int64_t B;
  float* grad_slots;       // (G, params): each block's partial dw and db of every layer
  int64_t params;
  float* scratch;          // (G, scratch_floats): each block's z, y of every layer and two dz buffers
  int64_t scratch_floats;
  int64_t dz_off;          // the two dz buffers (kRows, kFusedMlpMaxWidth) in a scratch slice
  double* loss_slots;      // (G)
  int64_t* hit_slots;      // (G)
  float label_smoothing, grad_scale;
};

// act(z) and act'(z) for an activation known only at run time (it changes from layer to layer): a switch that
// every thread of the block takes the same way, around the formulas of ops/activation_math.h.
__device__ __forceinline__ float act_forward_rt(Activation act, float z, float slope) {
  FUSEPROP_DISPATCH_ACTIVATION(act, A, return act_forward<A>(z, slope));
  return z;
}
__device__ __forceinline__ float act_derivative_rt(Activation act, float z, float y, float slope) {
  FUSEPROP_DISPATCH_ACTIVATION(act, A, return act_derivative<A>(z, y, slope));
  return 1.f;
}

// as (BM,BK) = op(a)[0:BM, k0:k0+BK] and bs (BK,BN) = op(b)[k0:k0+BK, 0:BN], zero outside op(a) (M,K) and
// op(b) (K,N). Consecutive threads walk the dimension that is contiguous in global memory, so loads coalesce.
__device__ __forceinline__ void load_tiles(Smem& s, const Mat& a, const Mat& b, int M, int N, int64_t K, int64_t k0) {
  for (int i = threadIdx.x; i < BM * BK; i += kFusedThreads) {
    const int m = a.trans ? i % BM : i / BK, k = a.trans ? i / BM : i % BK;
    const int64_t gk = k0 + k;
    s.as[m][k] = (m < M && gk < K) ? a.p[a.trans ? gk * a.ld + m : m * a.ld + gk] : 0.f;
  }
  for (int i = threadIdx.x; i < BK * BN; i += kFusedThreads) {
    const int k = b.trans ? i % BK : i / BN, n = b.trans ? i / BK : i % BN;
    const int64_t gk = k0 + k;
    s.bs[k][n] = (gk < K && n < N) ? b.p[b.trans ? n * b.ld + gk : gk * b.ld + n] : 0.f;
  }
}

// c (M,N) = op(a) (M,K) op(b) (K,N) for M, N <= 128, then epi(m, n, c_mn) once for each m < M, n < N (each
// element by one thread). Every thread of the block must call it (it synchronises the block), and it ends with
// __syncthreads(), so what epi wrote (shared or global) is visible to the whole block afterwards.
// TF32: 8 warps as 2 x 4, each a 64 x 32 sub-tile of 4 x 2 WMMA 16x16 accumulators; a warp skips the products of
// accumulators wholly outside (M,N), so a narrow layer costs less than a full tile. FP32: thread (ty,tx) of 16 x 16 owns rows ty + 16i, columns tx + 16j.
template <bool TF32, typename Epi>
__device__ void tile_gemm(Smem& s, const Mat& a, const Mat& b, int M, int N, int64_t K, Epi epi) {
  if constexpr (TF32) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wr = warp / 4 * 64, wc = warp % 4 * 32;
    const bool active = wr < M && wc < N;  // the same for the whole warp
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);
    for (int64_t k0 = 0; k0 < K; k0 += BK) {
      load_tiles(s, a, b, M, N, K, k0);
      __syncthreads();
      if (active) {
#pragma unroll
        for (int kk = 0; kk < BK; kk += 8) {
          wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa[4];
          wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb[2];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            if (wr + 16 * i >= M) continue;  // warp-uniform, as the skips below: no product of zero padding
            wmma::load_matrix_sync(fa[i], &s.as[wr + 16 * i][kk], BK + PAD);
            for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
          }
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            if (wc + 16 * j >= N) continue;
            wmma::load_matrix_sync(fb[j], &s.bs[kk][wc + 16 * j], BN + PAD);
            for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
          }
#pragma unroll
          for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j)
              if (wr + 16 * i < M && wc + 16 * j < N) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        if (wr + 16 * i >= M || wc + 16 * j >= N) continue;  // warp-uniform
        wmma::store_matrix_sync(&s.scratch[warp][0][0], acc[i][j], 16 + PAD, wmma::mem_row_major);
        __syncwarp();
        for (int t = lane; t < 16 * 16; t += 32) {
          const int m = wr + 16 * i + t / 16, n = wc + 16 * j + t % 16;
          if (m < M && n < N) epi(m, n, s.scratch[warp][t / 16][t % 16]);
        }
        __syncwarp();
      }
  } else {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[8][8] = {};
    for (int64_t k0 = 0; k0 < K; k0 += BK) {
      load_tiles(s, a, b, M, N, K, k0);
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        float av[8], bv[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) av[i] = s.as[ty + 16 * i][k];
#pragma unroll
        for (int j = 0; j < 8; ++j) bv[j] = s.bs[k][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int m = ty + 16 * i, n = tx + 16 * j;
        if (m < M && n < N) epi(m, n, acc[i][j]);
      }
  }
  __syncthreads();
}

// logits (rows, C) ld C -> dz (rows, C) ld C = (softmax - q) * grad_scale, s.row_loss and s.row_hit; one warp per
// row, as cuda/ops/losses_cuda.cu. Ends with __syncthreads().
__device__ void loss_tile(Smem& s, float* dz, const float* logits, const int64_t* labels, int rows, int C,
                          float label_smoothing, float grad_scale) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = warp; r < rows; r += kFusedThreads / 32) {  // r is the same for the whole warp
    const float* x = logits + int64_t(r) * C;
    float m = x[0];
    for (int c = lane; c < C; c += 32) m = max_nan(m, x[c]);
    m = warp_max(m);
    float sum = 0.f, sum_x = 0.f;
    float best = x[0];
    int best_c = 0;
    for (int c = lane; c < C; c += 32) {
      sum += expf(x[c] - m);
      sum_x += x[c];
      if (argmax_before(x[c], c, best, best_c)) best = x[c], best_c = c;
    }
    sum = warp_sum(sum);
    sum_x = warp_sum(sum_x);
    for (int o = 16; o > 0; o /= 2) {
      const float w = __shfl_xor_sync(0xffffffffu, best, o);
      const int j = __shfl_xor_sync(0xffffffffu, best_c, o);
      if (argmax_before(w, j, best, best_c)) best = w, best_c = j;
    }
    const float lse = m + logf(sum);
    const int64_t y = labels[r];
    const SmoothedTarget<float> q = smoothed_target(label_smoothing, C);
    if (lane == 0) {
      double loss = -0.0;  // the identity of +: the first term lands unchanged
      ce_row_loss_add(loss, lse, x[y], sum_x, label_smoothing, q);
      s.row_loss[r] = loss;
      s.row_hit[r] = best_c == y;
    }
    float* d = dz + int64_t(r) * C;
    for (int c = lane; c < C; c += 32) d[c] = ce_grad(expf(x[c] - lse), c == y, q, grad_scale);
  }
  __syncthreads();
}


// The forward pass (and, when Train, the loss and the backward pass) of every row tile of this block; see the
// top of the file. Grid: G blocks of kFusedThreads with G <= the number of tiles, so every block has a tile.
template <bool TF32, bool Train>
__global__ void __launch_bounds__(kFusedThreads, kBlocksPerSm) fused_mlp_kernel(NetArgs net) {
  __shared__ __align__(32) Smem s;
  __shared__ LayerArgs layers[kFusedMlpMaxLayers];  // indexed at run time: from shared memory, not the parameters
  if (threadIdx.x == 0) {
#pragma unroll
    for (int l = 0; l < kFusedMlpMaxLayers; ++l) layers[l] = net.layer[l];
  }
  __syncthreads();
  const int n_layers = net.n;
  float* scratch = net.scratch + blockIdx.x * net.scratch_floats;
  float* grad = Train ? net.grad_slots + blockIdx.x * net.params : nullptr;
  // the two dz buffers (kRows, kFusedMlpMaxWidth): layer l's dz lives in dz_buf(l % 2)
  float* const dz_even = scratch + net.dz_off;
  float* const dz_odd = dz_even + kRows * kFusedMlpMaxWidth;
  const auto dz_buf = [&](int parity) { return parity ? dz_odd : dz_even; };
  double loss_sum = 0;  // thread 0's, in tile order
  int64_t hit_sum = 0;
  const int64_t tiles = (net.B + kRows - 1) / kRows;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const bool first = tile == blockIdx.x;  // the block's first tile writes its gradient slot, later ones add
    const int64_t row0 = tile * kRows;
    const int rows = int(net.B - row0 < kRows ? net.B - row0 : kRows);
    const float* x = net.x + row0 * layers[0].in;  // the tile's rows of x, (rows, in), ld in

    for (int l = 0; l < n_layers; ++l) {
      const LayerArgs& L = layers[l];
      // z (rows,out) = a_prev (rows,in) w^T: op(b) = w (out,in) transposed, ld in
      const Mat a_prev = l == 0 ? Mat{x, L.in, false} : Mat{scratch + layers[l - 1].y_off, L.in, false};
      float* z = scratch + L.z_off;
      float* y = scratch + L.y_off;
      float* out = !Train && l == n_layers - 1 ? net.logits + row0 * L.out : nullptr;  // inference: the logits
      tile_gemm<TF32>(s, a_prev, Mat{L.w, L.in, true}, rows, int(L.out), L.in, [&](int m, int n, float v) {
        if (L.b) v += L.b[n];
        const int64_t i = int64_t(m) * L.out + n;
        if (out) {
          out[i] = act_forward_rt(L.act, v, L.slope);
        } else {
          z[i] = v;
          if (y != z) y[i] = act_forward_rt(L.act, v, L.slope);
        }
      });
    }

    if constexpr (Train) {
      const LayerArgs& last = layers[n_layers - 1];  // identity: its z are the logits
      loss_tile(s, dz_buf((n_layers - 1) % 2), scratch + last.z_off, net.labels + row0, rows, int(last.out),
                net.label_smoothing, net.grad_scale);
      if (threadIdx.x == 0) {  // s.row_loss is written next in the next tile's loss_tile, many barriers later
        for (int r = 0; r < rows; ++r) {
          loss_sum += s.row_loss[r];
          hit_sum += s.row_hit[r];
        }
      }

      for (int l = n_layers - 1; l >= 0; --l) {
        const LayerArgs& L = layers[l];
        const float* dz = dz_buf(l % 2);  // (rows, out), ld out
        // db (out) += column sums of dz, each column summed in row order by one thread
        if (L.b) {
          for (int n = threadIdx.x; n < L.out; n += kFusedThreads) {
            float sum = 0.f;
            for (int r = 0; r < rows; ++r) sum += dz[int64_t(r) * L.out + n];
            float* db = grad + L.db_off + n;
            *db = first ? sum : *db + sum;
          }
        }
        // dw (out,in) += dz^T a_prev, BN columns of in at a time: op(a) = dz (rows,out) transposed, ld out;
        // op(b) = a_prev (rows,in) from column i0, ld in; the sum runs over the tile's rows
        const float* a_prev = l == 0 ? x : scratch + layers[l - 1].y_off;
        for (int64_t i0 = 0; i0 < L.in; i0 += BN) {
          const int cols = int(L.in - i0 < BN ? L.in - i0 : BN);
          float* dw = grad + L.dw_off + i0;
          tile_gemm<TF32>(s, Mat{dz, L.out, true}, Mat{a_prev + i0, L.in, false}, int(L.out), cols, rows,
                          [&](int m, int n, float v) {
                            float* p = dw + int64_t(m) * L.in + n;
                            *p = first ? v : *p + v;
                          });
        }
        if (l == 0) break;  // x needs no gradient
        // da_prev (rows,in) = dz (rows,out) w (out,in); dz_prev = da_prev * act'_prev(z_prev), into the other buffer
        const LayerArgs& P = layers[l - 1];  // P.out == L.in
        const float* zp = scratch + P.z_off;
        const float* yp = scratch + P.y_off;
        float* dzp = dz_buf((l - 1) % 2);
        tile_gemm<TF32>(s, Mat{dz, L.out, false}, Mat{L.w, L.in, false}, rows, int(L.in), L.out,
                        [&](int m, int n, float v) {
                          const int64_t i = int64_t(m) * P.out + n;
                          dzp[i] = v * act_derivative_rt(P.act, zp[i], yp[i], P.slope);
                        });
      }
    }
  }
  if (Train && threadIdx.x == 0) {
    net.loss_slots[blockIdx.x] = loss_sum;
    net.hit_slots[blockIdx.x] = hit_sum;
  }
}

// grad_slots (G, params) -> every layer's dw and db: the G partials of each parameter added in block order, one
// thread per parameter (adjacent threads, adjacent parameters). Block 0's thread 0 also adds the G loss and hit
// slots in block order.
__global__ void fused_mlp_reduce_kernel(double* loss_total, int64_t* correct, NetArgs net, int G) {
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < net.params; p += int64_t(gridDim.x) * blockDim.x) {
    float sum = 0.f;
    for (int g = 0; g < G; ++g) sum += net.grad_slots[g * net.params + p];
#pragma unroll
    for (int l = 0; l < kFusedMlpMaxLayers; ++l) {  // unrolled: constant indices into the parameters
      const LayerArgs& L = net.layer[l];
      if (l < net.n && p >= L.dw_off && p < L.db_off + L.out) {
        if (p < L.db_off) L.dw[p - L.dw_off] = sum;
        else if (L.b && L.db) L.db[p - L.db_off] = sum;  // without a bias the slot was never written
      }
    }
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    double loss = 0;
    int64_t hits = 0;
    for (int g = 0; g < G; ++g) {
      loss += net.loss_slots[g];
      hits += net.hit_slots[g];
    }
    *loss_total = loss;
    *correct = hits;
  }
}

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The grid for B rows: one block per tile, at most kBlocksPerSm per multiprocessor of the current device.
int grid_blocks(int64_t B) {
  int device = 0, sms = 0;
  FUSEPROP_CUDA_CHECK(cudaGetDevice(&device));
  FUSEPROP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t tiles = ceil_div(B, kRows), most = int64_t(sms) * kBlocksPerSm;
  return int(tiles < most ? tiles : most);
}

// Lays the network and the workspace out for B rows: fills net (its workspace pointers only when workspace is set)
// and G, and returns the workspace bytes. Sections, each 256-byte aligned: grad_slots (G, params) float,
// scratch (G, scratch_floats) float, loss_slots (G) double, hit_slots (G) int64.
size_t plan(NetArgs* net, int* G, const FusedLayer* layers, int n_layers, int64_t B, void* workspace) {
  *net = NetArgs{};
  net->n = n_layers;
  net->B = B;
  int64_t params = 0, scratch = 0;
  for (int l = 0; l < n_layers; ++l) {
    const FusedLayer& f = layers[l];
    LayerArgs& L = net->layer[l];
    L.w = f.w, L.b = f.b, L.dw = f.dw, L.db = f.db, L.in = f.in, L.out = f.out, L.act = f.act, L.slope = f.slope;
    L.dw_off = params;
    L.db_off = params + f.out * f.in;
    params += f.out * f.in + f.out;
    L.z_off = scratch;
    scratch += kRows * f.out;
    L.y_off = L.z_off;
    if (f.act != Activation::identity) {
      L.y_off = scratch;
      scratch += kRows * f.out;
    }
  }
  net->dz_off = scratch;
  scratch += 2 * kRows * kFusedMlpMaxWidth;
  net->params = ceil_div(params, 64) * 64;  // each block's slot starts 256-byte aligned
  net->scratch_floats = ceil_div(scratch, 64) * 64;
  *G = B > 0 ? grid_blocks(B) : 0;
  const size_t g = size_t(*G);
  const size_t grads_at = 0, scratch_at = grads_at + align_up(g * size_t(net->params) * sizeof(float)),
               loss_at = scratch_at + align_up(g * size_t(net->scratch_floats) * sizeof(float)),
               hits_at = loss_at + align_up(g * sizeof(double)), bytes = hits_at + align_up(g * sizeof(int64_t));
  if (workspace) {
    char* base = static_cast<char*>(workspace);
    net->grad_slots = reinterpret_cast<float*>(base + grads_at);
    net->scratch = reinterpret_cast<float*>(base + scratch_at);
    net->loss_slots = reinterpret_cast<double*>(base + loss_at);
    net->hit_slots = reinterpret_cast<int64_t*>(base + hits_at);
  }
  return bytes;
}

}  // namespace

bool fused_mlp_supported(const FusedLayer* layers, int n_layers) {
  if (!layers || n_layers < 1 || n_layers > kFusedMlpMaxLayers) return false;
  for (int l = 0; l < n_layers; ++l) {
    const FusedLayer& L = layers[l];
    if (L.in < 1 || L.out < 1 || L.out > kFusedMlpMaxWidth) return false;
    if (l > 0 && L.in != layers[l - 1].out) return false;
  }
  return layers[n_layers - 1].act == Activation::identity;
}

size_t fused_mlp_workspace_bytes(const FusedLayer* layers, int n_layers, int64_t B) {
  NetArgs net;
  int G;
  return plan(&net, &G, layers, n_layers, B, nullptr);
}

void fused_mlp_forward_backward(double* loss_total, int64_t* correct, const FusedLayer* layers, int n_layers,
                                const float* x, const int64_t* labels, int64_t B, float label_smoothing,
                                float grad_scale, void* workspace, bool tf32) {
  if (B == 0) {  // no rows: zero gradients, loss and count
    for (int l = 0; l < n_layers; ++l) {
      FUSEPROP_CUDA_CHECK(cudaMemsetAsync(layers[l].dw, 0, size_t(layers[l].out * layers[l].in) * sizeof(float)));
      if (layers[l].b && layers[l].db)
        FUSEPROP_CUDA_CHECK(cudaMemsetAsync(layers[l].db, 0, size_t(layers[l].out) * sizeof(float)));
    }
    FUSEPROP_CUDA_CHECK(cudaMemsetAsync(loss_total, 0, sizeof(double)));
    FUSEPROP_CUDA_CHECK(cudaMemsetAsync(correct, 0, sizeof(int64_t)));
    return;
  }
  NetArgs net;
  int G;
  plan(&net, &G, layers, n_layers, B, workspace);
  net.x = x;
  net.labels = labels;
  net.label_smoothing = label_smoothing;
  net.grad_scale = grad_scale;
  if (tf32) fused_mlp_kernel<true, true><<<G, kFusedThreads>>>(net);
  else fused_mlp_kernel<false, true><<<G, kFusedThreads>>>(net);
  FUSEPROP_CUDA_CHECK_LAUNCH();
  fused_mlp_reduce_kernel<<<grid_1d(net.params), kThreads>>>(loss_total, correct, net, G);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void fused_mlp_forward(float* logits, const FusedLayer* layers, int n_layers, const float* x, int64_t B,
                       void* workspace, bool tf32) {
  if (B == 0) return;
  NetArgs net;
  int G;
  plan(&net, &G, layers, n_layers, B, workspace);
  net.x = x;
  net.logits = logits;
  if (tf32) fused_mlp_kernel<true, false><<<G, kFusedThreads>>>(net);
  else fused_mlp_kernel<false, false><<<G, kFusedThreads>>>(net);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

}  // namespace fuseprop::cuda
