// What the module reports about itself and the machine, and the settings it takes: version, compiler,
// architecture, CUDA devices; the CPU level the float kernels use, the caches, the thread count; the
// measured multiply-add peak the benchmarks report their GFLOP/s against.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/fma_peak.h"
#include "core/threads.h"
#include "python/bind.h"
#include "python/checks.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/core/device.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

std::string compiler_string() {
#if defined(__clang__)
  return cat("clang ", __clang_major__, ".", __clang_minor__, ".", __clang_patchlevel__);
#elif defined(__GNUC__)
  return cat("gcc ", __GNUC__, ".", __GNUC_MINOR__, ".", __GNUC_PATCHLEVEL__);
#elif defined(_MSC_VER)
  return cat("msvc ", _MSC_VER);
#else
  return "unknown";
#endif
}

std::string arch_string() {
#if defined(__x86_64__) || defined(_M_X64)
  return "x86_64";
#elif defined(__aarch64__) || defined(_M_ARM64)
  return "aarch64";
#else
  return "other";
#endif
}

// fma_peak(threads, seconds=0.2, level=None) -> GFLOP/s; level None is the active one.
double fma_peak_entry(const py::handle& threads, const py::handle& seconds, const py::handle& level) {
  constexpr long long kMaxThreads = 1024;
  constexpr double kMaxSeconds = 60.0;
  if (py::isinstance<py::bool_>(threads) || !PyIndex_Check(threads.ptr()))
    throw py::type_error(cat("threads must be an int, got ", type_name(threads)));
  const py::int_ threads_int = py::reinterpret_steal<py::int_>(PyNumber_Index(threads.ptr()));
  if (!threads_int) throw py::error_already_set();
  int overflow = 0;
  const long long n = PyLong_AsLongLongAndOverflow(threads_int.ptr(), &overflow);
  if (overflow || n < 1 || n > kMaxThreads)
    throw py::value_error(cat("threads must be in [1, ", kMaxThreads, "], got ", py::str(threads_int).cast<std::string>()));
  // a real number (Python's or NumPy's float or int), never a bool or a string
  const bool real = !py::isinstance<py::bool_>(seconds) && PyNumber_Check(seconds.ptr()) && !PyComplex_Check(seconds.ptr());
  double s = real ? PyFloat_AsDouble(seconds.ptr()) : -1.0;
  if (!real || (s == -1.0 && PyErr_Occurred())) {
    const bool too_large = real && PyErr_ExceptionMatches(PyExc_OverflowError);  // an int beyond any double
    PyErr_Clear();
    if (!too_large) throw py::type_error(cat("seconds must be a float, got ", type_name(seconds)));
    s = std::numeric_limits<double>::infinity();
  }
  if (!(s > 0.0 && s <= kMaxSeconds))  // also refuses NaN
    throw py::value_error(cat("seconds must be in (0, ", kMaxSeconds, "], got ", s));
  CpuLevel l = cpu_level_active();
  if (!level.is_none()) {
    if (!py::isinstance<py::str>(level)) throw py::type_error(cat("level must be a str or None, got ", type_name(level)));
    const std::string name = level.cast<std::string>();
    if (!parse_cpu_level(name, &l))
      throw py::value_error(cat("level must be one of generic, avx2, avx512; got '", name, "'"));
    if (static_cast<int>(l) > static_cast<int>(cpu_level_supported()))
      throw py::value_error(cat("level: this CPU cannot run the ", name, " kernels; available: up to ",
                                cpu_level_name(cpu_level_supported())));
  }
  py::gil_scoped_release nogil;
  return fma_peak(static_cast<int>(n), s, l) / 1e9;
}

}  // namespace

void bind_runtime_info(py::module_& m) {
  m.attr("__version__") = FUSEPROP_VERSION;
  m.attr("compiler") = compiler_string();
  m.attr("arch") = arch_string();
  m.attr("cuda_compiled") = bool(FUSEPROP_CUDA_COMPILED);
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_query", [] {
    const cuda::DeviceQuery q = cuda::query_devices();
    return py::dict("count"_a = q.count, "status"_a = q.status, "runtime_version"_a = q.runtime_version,
                    "driver_version"_a = q.driver_version);
  }, "device count and the runtime's status: never raises, whatever the driver");
  m.def("cuda_device_properties", [](int index) {
    const cuda::DeviceQuery q = cuda::query_devices();
    if (index < 0 || index >= q.count)
      throw py::value_error(cat("device must be in [0, ", q.count, "), got ", index, " (", q.status, ")"));
    const cuda::DeviceProperties p = cuda::device_properties(index);
    return py::dict("name"_a = p.name, "capability"_a = py::make_tuple(p.major, p.minor),
                    "total_memory"_a = p.total_memory, "multiprocessors"_a = p.multiprocessors);
  }, "index"_a);
#endif

  // ---- kernel selection and threads
  m.def("cpu_level", [] { return std::string(cpu_level_name(cpu_level_active())); },
        "the instruction set the float kernels use now: generic, avx2 or avx512");
  m.def("cpu_levels_available", [] {
    std::vector<std::string> names;
    for (CpuLevel l : cpu_levels_available()) names.emplace_back(cpu_level_name(l));
    return names;
  }, "every level this CPU can run, lowest first");
  m.def("set_cpu_level", [](const std::string& name) {
    CpuLevel level;
    if (!parse_cpu_level(name, &level))
      throw py::value_error(cat("level must be one of generic, avx2, avx512; got '", name, "'"));
    if (!set_cpu_level(level))
      throw py::value_error(cat("this CPU cannot run the ", name, " kernels; available: up to ", cpu_level_name(cpu_level_supported())));
  }, "level"_a);
  m.def("cpu_caches", [] {
    const CacheSizes& c = cpu_cache_sizes();
    return py::dict("l1d"_a = c.l1d, "l2"_a = c.l2, "l3"_a = c.l3);
  }, "the data caches the GEMM blocking is derived from, in bytes (FUSEPROP_CACHES=l1d,l2,l3 overrides)");
  m.def("get_num_threads", &num_threads);
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error(cat("num_threads must be >= 1, got ", n));
    set_num_threads(n);
  }, "n"_a);

  m.def("fma_peak", &fma_peak_entry, "threads"_a, "seconds"_a = 0.2, "level"_a = py::none(),
        "GFLOP/s of register-only float multiply-adds on `threads` threads at once over `seconds`, with the "
        "loop of `level` (None: the active level): the measured peak the benchmarks report against");
}

}  // namespace fuseprop::bindings
