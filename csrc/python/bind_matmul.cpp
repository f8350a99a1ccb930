// matmul and matmul_reference (CPU), cuda_matmul and its timer, and the GEMM's path and blocking settings.
#include <tuple>

#include "python/bind.h"
#include "python/checks.h"
#include "core/cpu_features.h"
#include "gemm/matmul.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/core/device.h"
#include "cuda/ops/matmul_cuda.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// a: op(a) (M,K), b: op(b) (K,N), both 2-D -> {M, N, K}; ValueError when the inner dimensions differ
std::tuple<int64_t, int64_t, int64_t> checked_matmul_shapes(const py::array& a, const py::array& b, bool trans_a,
                                                            bool trans_b) {
  check_ndim(a, "a", 2);
  check_ndim(b, "b", 2);
  const int64_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  const int64_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
  if (K != Kb)
    throw py::value_error(cat("matmul: inner dimensions differ: op(a) is (", M, ", ", K, ") and op(b) is (", Kb, ", ", N, ")"));
  return {M, N, K};
}

// a: op(a) (M,K); b: op(b) (K,N); c: (M,N) or None
template <bool Reference>
py::array matmul_entry(const py::handle& a_obj, const py::handle& b_obj, bool trans_a, bool trans_b, const py::handle& c_obj,
                       double alpha, double beta) {
  DType dt;
  py::array a = float_input(a_obj, "a", &dt);
  py::array b = float_input_like(b_obj, "b", dt, "a");
  int64_t M, N, K;  // plain variables, not a structured binding: C++17 lambdas cannot capture one
  std::tie(M, N, K) = checked_matmul_shapes(a, b, trans_a, trans_b);
  check_finite_scalar(alpha, "alpha");
  check_finite_scalar(beta, "beta");
  return dispatch(dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array c;
    if (c_obj.is_none()) {
      if (beta != 0) throw py::value_error("beta must be 0 when c is not given");
      c = empty<T>({M, N});
    } else {
      c = float_inout_like(c_obj, "c", dt, "a");
      check_shape(c, "c", {M, N});
      check_no_overlap(c, "c", a, "a");
      check_no_overlap(c, "c", b, "b");
    }
    py::gil_scoped_release nogil;
    auto kernel = Reference ? matmul_reference<T> : matmul<T>;
    kernel(ptr<T>(c), ptr<T>(a), ptr<T>(b), M, N, K, a.shape(1), b.shape(1), N, trans_a, trans_b, T(alpha), T(beta));
    return c;
  });
}

#if FUSEPROP_CUDA_COMPILED
// a: op(a) (M,K); b: op(b) (K,N) -> (M,N)
py::array cuda_matmul_entry(const py::handle& a_obj, const py::handle& b_obj, bool trans_a, bool trans_b, bool tf32) {
  require_f32(a_obj, "a");
  py::array a = float_input(a_obj, "a");
  py::array b = float_input_like(b_obj, "b", DType::f32, "a");
  int64_t M, N, K;  // plain variables, not a structured binding: C++17 lambdas cannot capture one
  std::tie(M, N, K) = checked_matmul_shapes(a, b, trans_a, trans_b);
  py::array c = empty<float>({M, N});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer da = to_device(a), db = to_device(b), dc(size_t(c.nbytes()));
    cuda::matmul(dc.as<float>(), da.as<float>(), db.as<float>(), M, N, K, a.shape(1), b.shape(1), N, trans_a, trans_b,
                 1.f, 0.f, tf32);
    dc.copy_to_host(ptr<void>(c));
  }
  return c;
}
#endif

}  // namespace

void bind_matmul(py::module_& m) {
  m.def("matmul", &matmul_entry<false>, "a"_a, "b"_a, "trans_a"_a = false, "trans_b"_a = false, "c"_a = py::none(),
        "alpha"_a = 1.0, "beta"_a = 0.0, "alpha*op(a)@op(b) + beta*c; blocked GEMM");
  m.def("matmul_reference", &matmul_entry<true>, "a"_a, "b"_a, "trans_a"_a = false, "trans_b"_a = false,
        "c"_a = py::none(), "alpha"_a = 1.0, "beta"_a = 0.0, "the scalar triple-loop GEMM the blocked one is checked against");
  m.def("gemm_blocking", [] {
    const GemmKernels<float>& k = gemm_kernels(float{});
    const GemmBlocking b = gemm_blocking(k.mr, k.nr, sizeof(float));
    return py::dict("level"_a = k.level, "mr"_a = k.mr, "nr"_a = k.nr, "mc"_a = b.mc, "kc"_a = b.kc, "nc"_a = b.nc);
  }, "the float GEMM's register tile (mr x nr) and cache blocking (mc, kc, nc) at the active level");
  m.def("_set_gemm_path", [](const std::string& name) {
    static const std::pair<const char*, GemmPath> table[] = {
        {"auto", GemmPath::automatic}, {"packed", GemmPath::packed}, {"direct", GemmPath::direct}, {"dot", GemmPath::dot}};
    for (const auto& [n, p] : table)
      if (name == n) return set_gemm_path(p);
    throw py::value_error(cat("path must be auto, packed, direct or dot; got '", name, "'"));
  }, "path"_a, "force a GEMM path (tests and benchmarks); a path that cannot serve a call falls back to packed");
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_matmul", &cuda_matmul_entry, "a"_a, "b"_a, "trans_a"_a = false, "trans_b"_a = false, "tf32"_a = false);
  m.def("cuda_matmul_time_ms", [](int64_t M, int64_t N, int64_t K, bool tf32, int repeats) {
    if (M < 1 || N < 1 || K < 1 || repeats < 1)
      throw py::value_error(cat("M, N, K and repeats must be >= 1, got ", M, ", ", N, ", ", K, ", ", repeats));
    require_device();
    py::gil_scoped_release nogil;
    return cuda::matmul_time_ms(M, N, K, tf32, repeats);
  }, "M"_a, "N"_a, "K"_a, "tf32"_a = true, "repeats"_a = 20,
        "median device time (ms, CUDA events) of one (M,K)x(K,N) cuda_matmul on device-resident data: no host copies");
#endif
}

}  // namespace fuseprop::bindings
