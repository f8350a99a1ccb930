// conv2d_forward / conv2d_backward (and their scalar references), max_pool2d_* and avg_pool2d_* (CPU), and their
// CUDA twins cuda_* (float32): one set of checks for both.
// Window arguments (stride, padding, dilation, kernel_size) are an int or a pair of ints (height, width).
#include <algorithm>
#include <memory>
#include <limits>
#include <utility>
#include <vector>

#include "python/bind.h"
#include "python/checks.h"
#include "ops/conv2d.h"
#include "ops/pool.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/ops/conv2d_cuda.h"
#include "cuda/ops/pool_cuda.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

using IntPair = std::pair<int64_t, int64_t>;

std::string pair_str(const IntPair& p) { return cat("(", p.first, ", ", p.second, ")"); }

// An int (both sides) or a tuple / list of two ints (height, width); never a bool or a float.
IntPair int_pair(const py::handle& obj, const char* name, bool allow_int = true) {
  auto is_int = [](const py::handle& v) { return py::isinstance<py::int_>(v) && !py::isinstance<py::bool_>(v); };
  if (allow_int && is_int(obj)) {
    const int64_t v = obj.cast<int64_t>();
    return {v, v};
  }
  if ((py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj)) && py::len(obj) == 2) {
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(obj);
    if (is_int(seq[0]) && is_int(seq[1])) return {seq[0].cast<int64_t>(), seq[1].cast<int64_t>()};
  }
  throw py::type_error(cat(name, " must be ", allow_int ? "an int or " : "", "a pair of ints (height, width), got ",
                           py::repr(obj).cast<std::string>()));
}

IntPair at_least(const IntPair& p, const char* name, int64_t lo) {
  if (p.first < lo || p.second < lo) throw py::value_error(cat(name, " must be >= ", lo, ", got ", pair_str(p)));
  return p;
}

// The window must fit the padded input: an output of at least one row and one column.
// input says where H and W came from ("x of shape (...)").
void check_fits(const char* what, const IntPair& extent, int64_t H, int64_t W, const IntPair& pad, const std::string& input) {
  if (extent.first > H + 2 * pad.first || extent.second > W + 2 * pad.second)
    throw py::value_error(cat(what, " ", extent.first, "x", extent.second, " is larger than the padded input ",
                              H + 2 * pad.first, "x", W + 2 * pad.second, " (", input, ", padding ", pair_str(pad), ")"));
}

// Workspace of n elements, its size overflow-checked.
template <typename T>
std::unique_ptr<T[]> workspace(int64_t n) {
  if (n < 0 || n > std::numeric_limits<int64_t>::max() / int64_t(sizeof(T)))
    throw py::value_error("the convolution's workspace is too large to allocate");
  // Uninitialised (new T[n], not a zero-filled vector): the kernels write every element before reading it,
  // and zeroing a 4 MB im2col buffer per call was a pass over memory of its own.
  return std::unique_ptr<T[]>(n > 0 ? new T[size_t(n)] : nullptr);
}

// -- conv2d ------------------------------------------------------------------------------------------

// x (N,C,H,W) and weight (O,C,kh,kw) with the window arguments -> the shape, every size checked.
Conv2dShape checked_conv_shape(const py::array& x, const py::array& w, const py::handle& stride_obj,
                               const py::handle& padding_obj, const py::handle& dilation_obj) {
  check_ndim(x, "x", 4);
  check_ndim(w, "weight", 4);
  const IntPair stride = at_least(int_pair(stride_obj, "stride"), "stride", 1);
  const IntPair pad = at_least(int_pair(padding_obj, "padding"), "padding", 0);
  const IntPair dil = at_least(int_pair(dilation_obj, "dilation"), "dilation", 1);
  Conv2dShape s{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(2), w.shape(3),
                stride.first, stride.second, pad.first, pad.second, dil.first, dil.second, 0, 0};
  if (w.shape(1) != s.C)
    throw py::value_error(cat("weight must have shape (out_channels, ", s.C, ", kh, kw) to match x of shape ", shape_str(x),
                              " (", s.C, " channels), got ", shape_str(w)));
  if (s.kh < 1 || s.kw < 1) throw py::value_error(cat("weight's kernel must be at least 1x1, got weight of shape ", shape_str(w)));
  check_fits("the kernel's extent", {dil.first * (s.kh - 1) + 1, dil.second * (s.kw - 1) + 1}, s.H, s.W, pad,
             cat("x of shape ", shape_str(x)));
  s.Ho = conv2d_out_size(s.H, s.kh, s.stride_h, s.pad_h, s.dil_h);
  s.Wo = conv2d_out_size(s.W, s.kw, s.stride_w, s.pad_w, s.dil_w);
  return s;
}

// The checks of a conv2d forward, shared by the CPU and CUDA entries: x (N,C,H,W), weight (O,C,kh,kw),
// bias (O) or None.
struct ConvForwardArgs {
  DType dt;
  py::array x, w;
  std::optional<py::array> b;
  Conv2dShape s;
  Activation act;
};
ConvForwardArgs checked_conv_forward_args(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                          const py::handle& stride, const py::handle& padding,
                                          const py::handle& dilation, const std::string& activation, double slope) {
  ConvForwardArgs r;
  r.x = float_input(x_obj, "x", &r.dt);
  r.w = float_input_like(w_obj, "weight", r.dt, "x");
  r.s = checked_conv_shape(r.x, r.w, stride, padding, dilation);
  if (!b_obj.is_none()) {
    r.b = float_input_like(b_obj, "bias", r.dt, "x");
    check_shape(*r.b, "bias", {r.s.O});
  }
  r.act = parse_activation(activation);
  check_finite_scalar(slope, "negative_slope");
  return r;
}

// x (N,C,H,W), weight (O,C,kh,kw), bias (O) or None -> (y, z) both (N,O,Ho,Wo)
template <bool Reference>
py::tuple conv2d_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                               const py::handle& stride, const py::handle& padding, const py::handle& dilation,
                               const std::string& activation, double slope) {
  const ConvForwardArgs r = checked_conv_forward_args(x_obj, w_obj, b_obj, stride, padding, dilation, activation, slope);
  const Conv2dShape& s = r.s;
  const Activation act = r.act;
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    // For the identity z and y are the same values: one array, returned as both (half the writes; the
    // kernels allow z == y). Nothing writes into either afterwards.
    py::array y = empty<T>({s.N, s.O, s.Ho, s.Wo});
    py::array z = act == Activation::identity ? y : py::array(empty<T>({s.N, s.O, s.Ho, s.Wo}));
    std::unique_ptr<T[]> ws = workspace<T>(Reference ? 0 : conv2d_forward_workspace(s));
    {
      py::gil_scoped_release nogil;
      if (Reference)
        conv2d_forward_reference<T>(ptr<T>(y), ptr<T>(z), ptr<T>(r.x), ptr<T>(r.w), ptr_or_null<T>(r.b), s, act, T(slope));
      else
        conv2d_forward<T>(ptr<T>(y), ptr<T>(z), ws.get(), ptr<T>(r.x), ptr<T>(r.w), ptr_or_null<T>(r.b), s, act,
                          T(slope));
    }
    return py::make_tuple(y, z);
  });
}

// The checks of a conv2d backward's inputs, shared by the CPU and CUDA entries: grad_y, z, y (N,O,Ho,Wo);
// x (N,C,H,W); weight (O,C,kh,kw). z and y may be None for the identity (need_zy false: they alias grad_y).
struct ConvBackwardArgs {
  DType dt;
  py::array dy, x, w, z, y;
  Conv2dShape s;
  Activation act;
  bool need_zy;
};
ConvBackwardArgs checked_conv_backward_args(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                            const py::handle& z_obj, const py::handle& y_obj, const py::handle& stride,
                                            const py::handle& padding, const py::handle& dilation,
                                            const std::string& activation, double slope, bool has_bias,
                                            const py::handle& db_obj) {
  ConvBackwardArgs r;
  r.dy = float_input(dy_obj, "grad_y", &r.dt);
  r.x = float_input_like(x_obj, "x", r.dt, "grad_y");
  r.w = float_input_like(w_obj, "weight", r.dt, "grad_y");
  r.s = checked_conv_shape(r.x, r.w, stride, padding, dilation);
  const std::vector<int64_t> out_dims{r.s.N, r.s.O, r.s.Ho, r.s.Wo};
  check_shape(r.dy, "grad_y", out_dims);
  r.act = parse_activation(activation);
  r.need_zy = r.act != Activation::identity || !z_obj.is_none() || !y_obj.is_none();
  r.z = r.need_zy ? float_input_like(z_obj, "z", r.dt, "grad_y") : r.dy;
  r.y = r.need_zy ? float_input_like(y_obj, "y", r.dt, "grad_y") : r.dy;
  check_shape(r.z, "z", out_dims);
  check_shape(r.y, "y", out_dims);
  check_finite_scalar(slope, "negative_slope");
  if (!has_bias && !db_obj.is_none()) throw py::value_error("grad_bias was given but has_bias is False");
  return r;
}

// The parameter gradients a conv2d backward accumulates into: the given grad_weight / grad_bias (checked:
// shape, writeable, no overlap with an input), or new zero arrays; db is empty without a bias.
struct ConvGrads {
  py::array dw, db;
};
template <typename T>
ConvGrads conv_grads(const ConvBackwardArgs& r, bool has_bias, const py::handle& dw_obj, const py::handle& db_obj) {
  const Conv2dShape& s = r.s;
  const std::vector<int64_t> w_dims{s.O, s.C, s.kh, s.kw};
  ConvGrads g;
  if (dw_obj.is_none()) {
    g.dw = empty<T>(w_dims);
    std::fill_n(ptr<T>(g.dw), g.dw.size(), T(0));
  } else {
    g.dw = float_inout_like(dw_obj, "grad_weight", r.dt, "grad_y");
    check_shape(g.dw, "grad_weight", w_dims);
    for (auto [in, name] : {std::pair{&r.dy, "grad_y"}, {&r.x, "x"}, {&r.w, "weight"}, {&r.z, "z"}, {&r.y, "y"}})
      check_no_overlap(g.dw, "grad_weight", *in, name);
  }
  if (has_bias && !db_obj.is_none()) {
    g.db = float_inout_like(db_obj, "grad_bias", r.dt, "grad_y");
    check_shape(g.db, "grad_bias", {s.O});
    for (auto [in, name] : {std::pair{&r.dy, "grad_y"}, {&r.x, "x"}, {&r.w, "weight"}, {&r.z, "z"}, {&r.y, "y"},
                            {&g.dw, "grad_weight"}})
      check_no_overlap(g.db, "grad_bias", *in, name);
  } else {
    g.db = empty<T>({has_bias ? s.O : 0});
    std::fill_n(ptr<T>(g.db), g.db.size(), T(0));
  }
  return g;
}

// grad_y, z, y (N,O,Ho,Wo); x (N,C,H,W); weight (O,C,kh,kw) -> (grad_x | None, grad_weight, grad_bias | None).
// grad_weight / grad_bias, when given, are accumulated into in place. z and y may be None for the identity.
template <bool Reference>
py::tuple conv2d_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                const py::handle& z_obj, const py::handle& y_obj, const py::handle& stride,
                                const py::handle& padding, const py::handle& dilation, const std::string& activation,
                                double slope, bool has_bias, bool need_grad_x, const py::handle& dw_obj,
                                const py::handle& db_obj) {
  const ConvBackwardArgs r = checked_conv_backward_args(dy_obj, x_obj, w_obj, z_obj, y_obj, stride, padding, dilation,
                                                        activation, slope, has_bias, db_obj);
  const Conv2dShape& s = r.s;
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    const ConvGrads g = conv_grads<T>(r, has_bias, dw_obj, db_obj);
    py::array dx = need_grad_x ? py::array(empty<T>({s.N, s.C, s.H, s.W})) : py::array();
    std::unique_ptr<T[]> ws = workspace<T>(Reference ? 0 : conv2d_backward_workspace(s, r.act));
    {
      py::gil_scoped_release nogil;
      T* dx_p = need_grad_x ? ptr<T>(dx) : nullptr;
      T* db_p = has_bias ? ptr<T>(g.db) : nullptr;
      const T* z_p = r.need_zy ? ptr<T>(r.z) : nullptr;
      const T* y_p = r.need_zy ? ptr<T>(r.y) : nullptr;
      if (Reference)
        conv2d_backward_reference<T>(dx_p, ptr<T>(g.dw), db_p, ptr<T>(r.dy), ptr<T>(r.x), ptr<T>(r.w), z_p, y_p, s,
                                     r.act, T(slope));
      else
        conv2d_backward<T>(dx_p, ptr<T>(g.dw), db_p, ws.get(), ptr<T>(r.dy), ptr<T>(r.x), ptr<T>(r.w), z_p, y_p, s,
                           r.act, T(slope));
    }
    return py::make_tuple(need_grad_x ? py::object(dx) : py::none(), g.dw, has_bias ? py::object(g.db) : py::none());
  });
}

// -- pooling -----------------------------------------------------------------------------------------

// The pooling window over an input of H x W: kernel_size >= 1, stride >= 1 (None: the kernel), 0 <= padding
// <= kernel / 2 (PyTorch's bound), the window no larger than the padded input.
Pool2dShape checked_pool_shape(int64_t N, int64_t C, int64_t H, int64_t W, const py::handle& kernel_obj,
                               const py::handle& stride_obj, const py::handle& padding_obj, const std::string& input) {
  const IntPair k = at_least(int_pair(kernel_obj, "kernel_size"), "kernel_size", 1);
  const IntPair st = stride_obj.is_none() ? k : at_least(int_pair(stride_obj, "stride"), "stride", 1);
  const IntPair pad = at_least(int_pair(padding_obj, "padding"), "padding", 0);
  if (2 * pad.first > k.first || 2 * pad.second > k.second)
    throw py::value_error(cat("padding must be at most half of kernel_size, got padding ", pair_str(pad),
                              " for kernel_size ", pair_str(k)));
  check_fits("kernel_size", k, H, W, pad, input);
  return {N, C, H, W, k.first, k.second, st.first, st.second, pad.first, pad.second,
          (H + 2 * pad.first - k.first) / st.first + 1, (W + 2 * pad.second - k.second) / st.second + 1};
}

// The checks of a pooling forward (max and average, CPU and CUDA): x (N,C,H,W) and the window.
struct PoolForwardArgs {
  DType dt;
  py::array x;
  Pool2dShape s;
};
PoolForwardArgs checked_pool_forward_args(const py::handle& x_obj, const py::handle& kernel, const py::handle& stride,
                                          const py::handle& padding) {
  PoolForwardArgs r;
  r.x = float_input(x_obj, "x", &r.dt);
  check_ndim(r.x, "x", 4);
  r.s = checked_pool_shape(r.x.shape(0), r.x.shape(1), r.x.shape(2), r.x.shape(3), kernel, stride, padding,
                           cat("x of shape ", shape_str(r.x)));
  return r;
}

// x (N,C,H,W) -> y (N,C,Ho,Wo), indices int64 (N,C,Ho,Wo)
py::tuple max_pool2d_forward_entry(const py::handle& x_obj, const py::handle& kernel, const py::handle& stride,
                                   const py::handle& padding) {
  const PoolForwardArgs r = checked_pool_forward_args(x_obj, kernel, stride, padding);
  const Pool2dShape& s = r.s;
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y = empty<T>({s.N, s.C, s.Ho, s.Wo});
    py::array indices = empty<int64_t>({s.N, s.C, s.Ho, s.Wo});
    {
      py::gil_scoped_release nogil;
      max_pool2d_forward<T>(ptr<T>(y), ptr<int64_t>(indices), ptr<T>(r.x), s);
    }
    return py::make_tuple(y, indices);
  });
}

// The input's (H, W): two ints >= 1.
IntPair checked_input_size(const py::handle& obj) {
  return at_least(int_pair(obj, "input_size", false), "input_size", 1);
}

// The checks of a max_pool2d backward (CPU and CUDA): grad_y, indices int64 (N,C,Ho,Wo), every index in
// [0, H*W) for input_size (H, W). Only N, C, H, W, Ho, Wo of s are set (the backward needs no window).
struct MaxPoolBackwardArgs {
  DType dt;
  py::array dy, indices;
  Pool2dShape s;
};
MaxPoolBackwardArgs checked_max_pool_backward_args(const py::handle& dy_obj, const py::handle& indices_obj,
                                                   const py::handle& size_obj) {
  MaxPoolBackwardArgs r;
  r.dy = float_input(dy_obj, "grad_y", &r.dt);
  check_ndim(r.dy, "grad_y", 4);
  r.indices = as_array(indices_obj, "indices");
  if (!r.indices.dtype().equal(py::dtype::of<int64_t>()))
    throw py::type_error(cat("indices must have dtype int64 (max_pool2d_forward's), got ", dtype_str(r.indices)));
  check_layout(r.indices, "indices");
  check_same_shape(r.indices, "indices", r.dy, "grad_y");
  const IntPair hw = checked_input_size(size_obj);
  r.s = {r.dy.shape(0), r.dy.shape(1), hw.first, hw.second, 1, 1, 1, 1, 0, 0, r.dy.shape(2), r.dy.shape(3)};
  const int64_t* idx = ptr<const int64_t>(r.indices);
  for (int64_t i = 0, n = r.indices.size(), HW = r.s.H * r.s.W; i < n; ++i)
    if (idx[i] < 0 || idx[i] >= HW)
      throw py::value_error(cat("indices must be in [0, ", HW, ") for input_size ", pair_str(hw), "; element ", i, " is ", idx[i]));
  return r;
}

// grad_y, indices (N,C,Ho,Wo); input_size (H, W) -> grad_x (N,C,H,W)
py::array max_pool2d_backward_entry(const py::handle& dy_obj, const py::handle& indices_obj, const py::handle& size_obj) {
  const MaxPoolBackwardArgs r = checked_max_pool_backward_args(dy_obj, indices_obj, size_obj);
  const Pool2dShape& s = r.s;
  return dispatch(r.dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dx = empty<T>({s.N, s.C, s.H, s.W});
    {
      py::gil_scoped_release nogil;
      max_pool2d_backward<T>(ptr<T>(dx), ptr<T>(r.dy), ptr<const int64_t>(r.indices), s);
    }
    return dx;
  });
}

// x (N,C,H,W) -> y (N,C,Ho,Wo)
py::array avg_pool2d_forward_entry(const py::handle& x_obj, const py::handle& kernel, const py::handle& stride,
                                   const py::handle& padding, bool count_include_pad) {
  const PoolForwardArgs r = checked_pool_forward_args(x_obj, kernel, stride, padding);
  const Pool2dShape& s = r.s;
  return dispatch(r.dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array y = empty<T>({s.N, s.C, s.Ho, s.Wo});
    {
      py::gil_scoped_release nogil;
      avg_pool2d_forward<T>(ptr<T>(y), ptr<T>(r.x), s, count_include_pad);
    }
    return y;
  });
}

// The checks of an avg_pool2d backward (CPU and CUDA): grad_y (N,C,Ho,Wo) for input_size (H, W) and the window.
struct AvgPoolBackwardArgs {
  DType dt;
  py::array dy;
  Pool2dShape s;
};
AvgPoolBackwardArgs checked_avg_pool_backward_args(const py::handle& dy_obj, const py::handle& size_obj,
                                                   const py::handle& kernel, const py::handle& stride,
                                                   const py::handle& padding) {
  AvgPoolBackwardArgs r;
  r.dy = float_input(dy_obj, "grad_y", &r.dt);
  check_ndim(r.dy, "grad_y", 4);
  const IntPair hw = checked_input_size(size_obj);
  r.s = checked_pool_shape(r.dy.shape(0), r.dy.shape(1), hw.first, hw.second, kernel, stride, padding,
                           cat("input_size ", pair_str(hw)));
  check_shape(r.dy, "grad_y", {r.s.N, r.s.C, r.s.Ho, r.s.Wo});
  return r;
}

// grad_y (N,C,Ho,Wo); input_size (H, W) -> grad_x (N,C,H,W)
py::array avg_pool2d_backward_entry(const py::handle& dy_obj, const py::handle& size_obj, const py::handle& kernel,
                                    const py::handle& stride, const py::handle& padding, bool count_include_pad) {
  const AvgPoolBackwardArgs r = checked_avg_pool_backward_args(dy_obj, size_obj, kernel, stride, padding);
  const Pool2dShape& s = r.s;
  return dispatch(r.dt, [&](auto tag) -> py::array {
    using T = decltype(tag);
    py::array dx = empty<T>({s.N, s.C, s.H, s.W});
    {
      py::gil_scoped_release nogil;
      avg_pool2d_backward<T>(ptr<T>(dx), ptr<T>(r.dy), s, count_include_pad);
    }
    return dx;
  });
}

#if FUSEPROP_CUDA_COMPILED
// -- the CUDA twins: float32 first, the same checks, outputs allocated, then the device ------------------

// Device workspace of n floats, its size overflow-checked (before the device is asked for).
size_t device_workspace_bytes(int64_t n) {
  if (n < 0 || n > std::numeric_limits<int64_t>::max() / int64_t(sizeof(float)))
    throw py::value_error("the convolution's workspace is too large to allocate");
  return size_t(n) * sizeof(float);
}

// x (N,C,H,W), weight (O,C,kh,kw), bias (O) or None -> (y, z) both (N,O,Ho,Wo)
py::tuple cuda_conv2d_forward_entry(const py::handle& x_obj, const py::handle& w_obj, const py::handle& b_obj,
                                    const py::handle& stride, const py::handle& padding, const py::handle& dilation,
                                    const std::string& activation, double slope, bool tf32) {
  require_f32(x_obj, "x");
  const ConvForwardArgs r = checked_conv_forward_args(x_obj, w_obj, b_obj, stride, padding, dilation, activation, slope);
  const Conv2dShape& s = r.s;
  py::array y = empty<float>({s.N, s.O, s.Ho, s.Wo}), z = empty<float>({s.N, s.O, s.Ho, s.Wo});
  const size_t ws_bytes = device_workspace_bytes(cuda::conv2d_forward_workspace(s));
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_x = to_device(r.x), d_w = to_device(r.w), d_b = r.b ? to_device(*r.b) : cuda::DeviceBuffer();
    const cuda::DeviceBuffer d_y(size_t(y.nbytes())), d_z(size_t(z.nbytes())), ws(ws_bytes);
    cuda::conv2d_forward(d_y.as<float>(), d_z.as<float>(), ws.as<float>(), d_x.as<float>(), d_w.as<float>(),
                         r.b ? d_b.as<float>() : nullptr, s, r.act, float(slope), tf32);
    d_y.copy_to_host(ptr<void>(y));
    d_z.copy_to_host(ptr<void>(z));
  }
  return py::make_tuple(y, z);
}

// As conv2d_backward: -> (grad_x | None, grad_weight, grad_bias | None), given gradients accumulated into.
py::tuple cuda_conv2d_backward_entry(const py::handle& dy_obj, const py::handle& x_obj, const py::handle& w_obj,
                                     const py::handle& z_obj, const py::handle& y_obj, const py::handle& stride,
                                     const py::handle& padding, const py::handle& dilation,
                                     const std::string& activation, double slope, bool has_bias, bool need_grad_x,
                                     const py::handle& dw_obj, const py::handle& db_obj, bool tf32) {
  require_f32(dy_obj, "grad_y");
  const ConvBackwardArgs r = checked_conv_backward_args(dy_obj, x_obj, w_obj, z_obj, y_obj, stride, padding, dilation,
                                                        activation, slope, has_bias, db_obj);
  const Conv2dShape& s = r.s;
  const ConvGrads g = conv_grads<float>(r, has_bias, dw_obj, db_obj);
  py::array dx = empty<float>({need_grad_x ? s.N : 0, s.C, s.H, s.W});
  const size_t ws_bytes = device_workspace_bytes(cuda::conv2d_backward_workspace(s));
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(r.dy), d_x = to_device(r.x), d_w = to_device(r.w);
    const cuda::DeviceBuffer d_z = r.need_zy ? to_device(r.z) : cuda::DeviceBuffer(),
                             d_y = r.need_zy ? to_device(r.y) : cuda::DeviceBuffer();
    const cuda::DeviceBuffer d_dw = to_device(g.dw), d_db = to_device(g.db), d_dx(size_t(dx.nbytes())), ws(ws_bytes);
    cuda::conv2d_backward(need_grad_x ? d_dx.as<float>() : nullptr, d_dw.as<float>(),
                          has_bias ? d_db.as<float>() : nullptr, ws.as<float>(), d_dy.as<float>(), d_x.as<float>(),
                          d_w.as<float>(), r.need_zy ? d_z.as<float>() : nullptr, r.need_zy ? d_y.as<float>() : nullptr,
                          s, r.act, float(slope), tf32);
    d_dx.copy_to_host(ptr<void>(dx));
    d_dw.copy_to_host(ptr<void>(g.dw));
    d_db.copy_to_host(ptr<void>(g.db));
  }
  return py::make_tuple(need_grad_x ? py::object(dx) : py::none(), g.dw, has_bias ? py::object(g.db) : py::none());
}

// x (N,C,H,W) -> y (N,C,Ho,Wo), indices int64 (N,C,Ho,Wo)
py::tuple cuda_max_pool2d_forward_entry(const py::handle& x_obj, const py::handle& kernel, const py::handle& stride,
                                        const py::handle& padding) {
  require_f32(x_obj, "x");
  const PoolForwardArgs r = checked_pool_forward_args(x_obj, kernel, stride, padding);
  const Pool2dShape& s = r.s;
  py::array y = empty<float>({s.N, s.C, s.Ho, s.Wo});
  py::array indices = empty<int64_t>({s.N, s.C, s.Ho, s.Wo});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_x = to_device(r.x), d_y(size_t(y.nbytes())), d_i(size_t(indices.nbytes()));
    cuda::max_pool2d_forward(d_y.as<float>(), d_i.as<int64_t>(), d_x.as<float>(), s);
    d_y.copy_to_host(ptr<void>(y));
    d_i.copy_to_host(ptr<void>(indices));
  }
  return py::make_tuple(y, indices);
}

// grad_y, indices (N,C,Ho,Wo); input_size (H, W) -> grad_x (N,C,H,W)
py::array cuda_max_pool2d_backward_entry(const py::handle& dy_obj, const py::handle& indices_obj,
                                         const py::handle& size_obj) {
  require_f32(dy_obj, "grad_y");
  const MaxPoolBackwardArgs r = checked_max_pool_backward_args(dy_obj, indices_obj, size_obj);
  const Pool2dShape& s = r.s;
  py::array dx = empty<float>({s.N, s.C, s.H, s.W});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(r.dy), d_i = to_device(r.indices), d_dx(size_t(dx.nbytes()));
    cuda::max_pool2d_backward(d_dx.as<float>(), d_dy.as<float>(), d_i.as<int64_t>(), s);
    d_dx.copy_to_host(ptr<void>(dx));
  }
  return dx;
}

// x (N,C,H,W) -> y (N,C,Ho,Wo)
py::array cuda_avg_pool2d_forward_entry(const py::handle& x_obj, const py::handle& kernel, const py::handle& stride,
                                        const py::handle& padding, bool count_include_pad) {
  require_f32(x_obj, "x");
  const PoolForwardArgs r = checked_pool_forward_args(x_obj, kernel, stride, padding);
  const Pool2dShape& s = r.s;
  py::array y = empty<float>({s.N, s.C, s.Ho, s.Wo});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_x = to_device(r.x), d_y(size_t(y.nbytes()));
    cuda::avg_pool2d_forward(d_y.as<float>(), d_x.as<float>(), s, count_include_pad);
    d_y.copy_to_host(ptr<void>(y));
  }
  return y;
}

// grad_y (N,C,Ho,Wo); input_size (H, W) -> grad_x (N,C,H,W)
py::array cuda_avg_pool2d_backward_entry(const py::handle& dy_obj, const py::handle& size_obj, const py::handle& kernel,
                                         const py::handle& stride, const py::handle& padding, bool count_include_pad) {
  require_f32(dy_obj, "grad_y");
  const AvgPoolBackwardArgs r = checked_avg_pool_backward_args(dy_obj, size_obj, kernel, stride, padding);
  const Pool2dShape& s = r.s;
  py::array dx = empty<float>({s.N, s.C, s.H, s.W});
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device(r.dy), d_dx(size_t(dx.nbytes()));
    cuda::avg_pool2d_backward(d_dx.as<float>(), d_dy.as<float>(), s, count_include_pad);
    d_dx.copy_to_host(ptr<void>(dx));
  }
  return dx;
}
#endif

}  // namespace

void bind_conv(py::module_& m) {
  const py::tuple one = py::make_tuple(1, 1), zero = py::make_tuple(0, 0);
  m.def("conv2d_forward", &conv2d_forward_entry<false>, "x"_a, "weight"_a, "bias"_a = py::none(), "stride"_a = one,
        "padding"_a = zero, "dilation"_a = one, "activation"_a = "identity", "negative_slope"_a = 0.01,
        "(y, z): z = conv2d(x, weight) + bias, y = act(z); im2col per chunk of samples and the GEMM");
  m.def("conv2d_backward", &conv2d_backward_entry<false>, "grad_y"_a, "x"_a, "weight"_a, "z"_a, "y"_a, "stride"_a = one,
        "padding"_a = zero, "dilation"_a = one, "activation"_a = "identity", "negative_slope"_a = 0.01,
        "has_bias"_a = true, "need_grad_x"_a = true, "grad_weight"_a = py::none(), "grad_bias"_a = py::none(),
        "(grad_x | None, grad_weight, grad_bias | None); given grad_weight / grad_bias are accumulated into");
  m.def("conv2d_forward_reference", &conv2d_forward_entry<true>, "x"_a, "weight"_a, "bias"_a = py::none(),
        "stride"_a = one, "padding"_a = zero, "dilation"_a = one, "activation"_a = "identity", "negative_slope"_a = 0.01,
        "conv2d_forward by the scalar loops the fast kernel is checked against");
  m.def("conv2d_backward_reference", &conv2d_backward_entry<true>, "grad_y"_a, "x"_a, "weight"_a, "z"_a, "y"_a,
        "stride"_a = one, "padding"_a = zero, "dilation"_a = one, "activation"_a = "identity",
        "negative_slope"_a = 0.01, "has_bias"_a = true, "need_grad_x"_a = true, "grad_weight"_a = py::none(),
        "grad_bias"_a = py::none(), "conv2d_backward by the scalar loops the fast kernel is checked against");
  m.def("_set_conv2d_chunk", [](int64_t n) {
    if (n < 0) throw py::value_error(cat("n must be >= 0, got ", n));
    set_conv2d_chunk_override(n);
  }, "n"_a, "force the samples per GEMM of conv2d (0: by shape; tests and benchmarks)");
  m.def("max_pool2d_forward", &max_pool2d_forward_entry, "x"_a, "kernel_size"_a, "stride"_a = py::none(),
        "padding"_a = 0, "(y, indices): the max of each window and its flat index h*W + w in the input plane");
  m.def("max_pool2d_backward", &max_pool2d_backward_entry, "grad_y"_a, "indices"_a, "input_size"_a,
        "grad_x (N,C,H,W): grad_y scatter-added at indices");
  m.def("avg_pool2d_forward", &avg_pool2d_forward_entry, "x"_a, "kernel_size"_a, "stride"_a = py::none(),
        "padding"_a = 0, "count_include_pad"_a = true, "the mean of each window");
  m.def("avg_pool2d_backward", &avg_pool2d_backward_entry, "grad_y"_a, "input_size"_a, "kernel_size"_a,
        "stride"_a = py::none(), "padding"_a = 0, "count_include_pad"_a = true,
        "grad_x (N,C,H,W): each grad_y / divisor spread over its window");
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_conv2d_forward", &cuda_conv2d_forward_entry, "x"_a, "weight"_a, "bias"_a = py::none(), "stride"_a = one,
        "padding"_a = zero, "dilation"_a = one, "activation"_a = "identity", "negative_slope"_a = 0.01,
        "tf32"_a = false, "conv2d_forward on the device (float32)");
  m.def("cuda_conv2d_backward", &cuda_conv2d_backward_entry, "grad_y"_a, "x"_a, "weight"_a, "z"_a, "y"_a,
        "stride"_a = one, "padding"_a = zero, "dilation"_a = one, "activation"_a = "identity",
        "negative_slope"_a = 0.01, "has_bias"_a = true, "need_grad_x"_a = true, "grad_weight"_a = py::none(),
        "grad_bias"_a = py::none(), "tf32"_a = false, "conv2d_backward on the device (float32)");
  m.def("cuda_max_pool2d_forward", &cuda_max_pool2d_forward_entry, "x"_a, "kernel_size"_a, "stride"_a = py::none(),
        "padding"_a = 0, "max_pool2d_forward on the device (float32)");
  m.def("cuda_max_pool2d_backward", &cuda_max_pool2d_backward_entry, "grad_y"_a, "indices"_a, "input_size"_a,
        "max_pool2d_backward on the device (float32)");
  m.def("cuda_avg_pool2d_forward", &cuda_avg_pool2d_forward_entry, "x"_a, "kernel_size"_a, "stride"_a = py::none(),
        "padding"_a = 0, "count_include_pad"_a = true, "avg_pool2d_forward on the device (float32)");
  m.def("cuda_avg_pool2d_backward", &cuda_avg_pool2d_backward_entry, "grad_y"_a, "input_size"_a, "kernel_size"_a,
        "stride"_a = py::none(), "padding"_a = 0, "count_include_pad"_a = true,
        "avg_pool2d_backward on the device (float32)");
#endif
}

}  // namespace fuseprop::bindings
