#include "cuda/ops/matmul_cuda.h"

#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <vector>

#include "cuda/ops/activations_cuda.h"
#include "ops/activation_math.h"
#include "cuda/core/launch.cuh"

namespace fuseprop::cuda {

namespace {

namespace wmma = nvcuda::wmma;

// A block computes a BM x BN tile of c, stepping through K by BK; 256 threads.
constexpr int BM = 128, BN = 128, BK = 16, kGemmThreads = 256;
constexpr int PAD = 4;  // floats of padding per shared row: spreads banks, keeps 32-byte WMMA alignment

struct Operands {
  const float* a;
  const float* b;
  int64_t M, N, K, lda, ldb;
  bool trans_a, trans_b;
};

// What happens to each finished element: c = alpha acc + beta c (+ bias[n]); y = act(c) when y is set.
struct Epilogue {
  float* c;
  int64_t ldc;  // also y's leading dimension
  float alpha, beta;
  const float* bias;  // (N) or null
  float* y;           // (M,N) or null
  float slope;
};

template <Activation A>
__device__ __forceinline__ void epilogue(const Epilogue& e, int64_t m, int64_t n, float acc) {
  float v = e.alpha * acc;
  if (e.beta != 0.f) v += e.beta * e.c[m * e.ldc + n];
  if (e.bias) v += e.bias[n];
  e.c[m * e.ldc + n] = v;
  if (e.y) e.y[m * e.ldc + n] = act_forward<A>(v, e.slope);
}

// as (BM,BK) = op(a)[m0:, k0:], bs (BK,BN) = op(b)[k0:, n0:], zero past the matrix edges. Consecutive
// threads walk the dimension that is contiguous in global memory, so the loads coalesce.
__device__ __forceinline__ void load_tiles(float (*as)[BK + PAD], float (*bs)[BN + PAD], const Operands& op,
                                           int64_t m0, int64_t n0, int64_t k0) {
  for (int i = threadIdx.x; i < BM * BK; i += kGemmThreads) {
    const int r = op.trans_a ? i % BM : i / BK, k = op.trans_a ? i / BM : i % BK;
    const int64_t gm = m0 + r, gk = k0 + k;
    as[r][k] = (gm < op.M && gk < op.K) ? op.a[op.trans_a ? gk * op.lda + gm : gm * op.lda + gk] : 0.f;
  }
  for (int i = threadIdx.x; i < BK * BN; i += kGemmThreads) {
    const int k = op.trans_b ? i % BK : i / BN, n = op.trans_b ? i / BK : i % BN;
    const int64_t gk = k0 + k, gn = n0 + n;
    bs[k][n] = (gk < op.K && gn < op.N) ? op.b[op.trans_b ? gn * op.ldb + gk : gk * op.ldb + gn] : 0.f;
  }
}

// c (M,N) tile (BM,BN) per block = op(a) (M,K) op(b) (K,N) on tensor cores; 8 warps as 2 x 4, each warp
// a 64 x 32 sub-tile of 4 x 2 WMMA 16x16 accumulators; edges through a per-warp scratch, masked.
template <Activation A>
__global__ void __launch_bounds__(kGemmThreads) gemm_tf32_kernel(Operands op, Epilogue e) {
  __shared__ __align__(32) float as[BM][BK + PAD];
  __shared__ __align__(32) float bs[BK][BN + PAD];
  __shared__ __align__(32) float scratch[kGemmThreads / 32][16][16 + PAD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr = warp / 4 * 64, wc = warp % 4 * 32;
  const int64_t m0 = blockIdx.y * int64_t(BM), n0 = blockIdx.x * int64_t(BN);

  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int64_t k0 = 0; k0 < op.K; k0 += BK) {
    load_tiles(as, bs, op, m0, n0, k0);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 8) {
      wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        wmma::load_matrix_sync(fa[i], &as[wr + 16 * i][kk], BK + PAD);
        for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);  // round to nearest
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::load_matrix_sync(fb[j], &bs[kk][wc + 16 * j], BN + PAD);
        for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(&scratch[warp][0][0], acc[i][j], 16 + PAD, wmma::mem_row_major);
      __syncwarp();
      for (int t = lane; t < 16 * 16; t += 32) {
        const int r = t / 16, col = t % 16;
        const int64_t m = m0 + wr + 16 * i + r, n = n0 + wc + 16 * j + col;
        if (m < op.M && n < op.N) epilogue<A>(e, m, n, scratch[warp][r][col]);
      }
      __syncwarp();
    }
}

// c (M,N) tile (BM,BN) per block = op(a) (M,K) op(b) (K,N) in FP32 FMA; thread (ty,tx) of 16 x 16 owns
// rows ty + 16i and columns tx + 16j (i, j < 8), so a warp reads shared rows without bank conflicts.
template <Activation A>
__global__ void __launch_bounds__(kGemmThreads) gemm_fp32_kernel(Operands op, Epilogue e) {
  __shared__ float as[BM][BK + PAD];
  __shared__ float bs[BK][BN + PAD];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = blockIdx.y * int64_t(BM), n0 = blockIdx.x * int64_t(BN);
  float acc[8][8] = {};
  for (int64_t k0 = 0; k0 < op.K; k0 += BK) {
    load_tiles(as, bs, op, m0, n0, k0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float a[8], b[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) a[i] = as[ty + 16 * i][k];
#pragma unroll
      for (int j = 0; j < 8; ++j) b[j] = bs[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < op.M && n < op.N) epilogue<A>(e, m, n, acc[i][j]);
    }
}

// dz (B,OUT) row-major -> db (OUT); one thread per column adds its rows in order; adjacent threads, adjacent columns
__global__ void bias_backward_kernel(float* db, const float* dz, int64_t B, int64_t OUT) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < OUT; n += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t r = 0; r < B; ++r) s += dz[r * OUT + n];
    db[n] += s;
  }
}

void gemm(const Operands& op, const Epilogue& e, Activation act, bool tf32) {
  if (op.M == 0 || op.N == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(op.N, BN)), static_cast<unsigned>(ceil_div(op.M, BM)));
  FUSEPROP_DISPATCH_ACTIVATION(act, A,
                               if (tf32) gemm_tf32_kernel<A><<<grid, kGemmThreads>>>(op, e);
                               else gemm_fp32_kernel<A><<<grid, kGemmThreads>>>(op, e));
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

// A CUDA event that is destroyed with its scope.
struct Event {
  cudaEvent_t event;
  Event() { FUSEPROP_CUDA_CHECK(cudaEventCreate(&event)); }
  ~Event() { cudaEventDestroy(event); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

}  // namespace

void matmul(float* c, const float* a, const float* b, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
            int64_t ldc, bool trans_a, bool trans_b, float alpha, float beta, bool tf32) {
  gemm({a, b, M, N, K, lda, ldb, trans_a, trans_b}, {c, ldc, alpha, beta, nullptr, nullptr, 0.f}, Activation::identity,
       tf32);
}

void linear_forward(float* y, float* z, const float* x, const float* w, const float* b, int64_t B, int64_t IN,
                    int64_t OUT, Activation act, float slope, bool tf32) {
  // z (B,OUT) = x (B,IN) w^T, w stored (OUT,IN): op(b) = w transposed, ldb = IN
  gemm({x, w, B, OUT, IN, IN, IN, false, true}, {z, OUT, 1.f, 0.f, b, y, slope}, act, tf32);
}

void bias_backward(float* db, const float* dz, int64_t B, int64_t OUT) {
  if (OUT == 0) return;
  bias_backward_kernel<<<grid_1d(OUT), kThreads>>>(db, dz, B, OUT);
  FUSEPROP_CUDA_CHECK_LAUNCH();
}

void linear_backward(float* dx, float* dw, float* db, float* workspace, const float* dy, const float* x, const float* w,
                     const float* z, const float* y, int64_t B, int64_t IN, int64_t OUT, Activation act, float slope,
                     bool tf32) {
  const float* dz = dy;
  if (act != Activation::identity) {
    activation_backward(workspace, dy, z, y, B * OUT, act, slope);
    dz = workspace;
  }
  if (db) bias_backward(db, dz, B, OUT);
  // dw (OUT,IN) += dz^T x: dz stored (B,OUT), so op(a) = dz transposed with lda = OUT; x (B,IN), ldb = IN
  matmul(dw, dz, x, OUT, IN, B, OUT, IN, IN, true, false, 1.f, 1.f, tf32);
  // dx (B,IN) = dz (B,OUT) w (OUT,IN)
  if (dx) matmul(dx, dz, w, B, IN, OUT, OUT, IN, IN, false, false, 1.f, 0.f, tf32);
}

double matmul_time_ms(int64_t M, int64_t N, int64_t K, bool tf32, int repeats) {
  DeviceBuffer a(size_t(M * K) * sizeof(float)), b(size_t(K * N) * sizeof(float)), c(size_t(M * N) * sizeof(float));
  // Every byte 0x3c: each float is about 0.0115, finite, and the same on every run.
  FUSEPROP_CUDA_CHECK(cudaMemset(a.as<void>(), 0x3c, a.bytes()));
  FUSEPROP_CUDA_CHECK(cudaMemset(b.as<void>(), 0x3c, b.bytes()));
  auto run = [&] { matmul(c.as<float>(), a.as<float>(), b.as<float>(), M, N, K, K, N, N, false, false, 1.f, 0.f, tf32); };
  run();  // warm-up
  Event start, stop;
  std::vector<float> ms(size_t(std::max(repeats, 1)));
  for (float& t : ms) {
    FUSEPROP_CUDA_CHECK(cudaEventRecord(start.event));
    run();
    FUSEPROP_CUDA_CHECK(cudaEventRecord(stop.event));
    FUSEPROP_CUDA_CHECK(cudaEventSynchronize(stop.event));
    FUSEPROP_CUDA_CHECK(cudaEventElapsedTime(&t, start.event, stop.event));
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

}  // namespace fuseprop::cuda
