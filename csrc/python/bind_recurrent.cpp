// recurrent_forward / recurrent_backward (CPU): one recurrent layer (rnn with tanh or relu, lstm, gru), one
// direction, batch-first, and its backpropagation through time (full, or truncated every bptt_steps steps); and
// their CUDA twins cuda_* (float32): one set of checks for both.
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "python/bind.h"
#include "python/checks.h"
#include "core/threads.h"
#include "ops/recurrent.h"
#if FUSEPROP_CUDA_COMPILED
#include "cuda/ops/recurrent_cuda.h"
#endif

namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

const char* cell_name(RecurrentCell cell) {
  return cell == RecurrentCell::lstm ? "lstm" : cell == RecurrentCell::gru ? "gru" : "rnn";
}

std::string str_arg(const py::handle& obj, const char* name, const char* choices) {
  if (!py::isinstance<py::str>(obj))
    throw py::type_error(cat(name, " must be a str (", choices, "), got ", type_name(obj)));
  return obj.cast<std::string>();
}

// cell 'rnn' | 'lstm' | 'gru' and nonlinearity 'tanh' | 'relu' (relu: rnn only) -> the kernels' cell
RecurrentCell parse_cell(const py::handle& cell_obj, const py::handle& nonlinearity_obj) {
  const std::string cell = str_arg(cell_obj, "cell", "'rnn', 'lstm' or 'gru'");
  if (cell != "rnn" && cell != "lstm" && cell != "gru")
    throw py::value_error(cat("cell must be 'rnn', 'lstm' or 'gru', got '", cell, "'"));
  const std::string nl = str_arg(nonlinearity_obj, "nonlinearity", "'tanh' or 'relu'");
  if (nl != "tanh" && nl != "relu") throw py::value_error(cat("nonlinearity must be 'tanh' or 'relu', got '", nl, "'"));
  if (cell == "rnn") return nl == "relu" ? RecurrentCell::rnn_relu : RecurrentCell::rnn_tanh;
  if (nl != "tanh")
    throw py::value_error(cat("nonlinearity 'relu' is for cell 'rnn' only: cell '", cell, "' has fixed gate nonlinearities"));
  return cell == "lstm" ? RecurrentCell::lstm : RecurrentCell::gru;
}

// An optional array read by the kernel: None, or float_input_like (its shape is checked later).
std::optional<py::array> optional_input(const py::handle& obj, const char* name, DType dt) {
  if (obj.is_none()) return std::nullopt;
  return float_input_like(obj, name, dt, "x");
}

// An array the cell does not have (c0 and its gradients: lstm only) must be None.
void check_lstm_only(const std::optional<py::array>& a, const char* name, RecurrentCell cell) {
  if (a && cell != RecurrentCell::lstm)
    throw py::value_error(cat(name, " is for cell 'lstm' only (the cell state): it must be None for cell '",
                              cell_name(cell), "'"));
}

void check_optional_shape(const std::optional<py::array>& a, const char* name, const std::vector<int64_t>& dims) {
  if (a) check_shape(*a, name, dims);
}

// The arguments both entries share: x (B,T,I) sets the dtype; h0, c0 (B,H) or None; w_ih (G*H, I); w_hh (G*H, H);
// b_hh (G*H) or None (and, in the forward, b_ih with it). Every array's form is checked before any shape.
struct RecurrentArgs {
  DType dt;
  RecurrentShape s;
  py::array x, w_ih, w_hh;
  std::optional<py::array> h0, c0, b_ih, b_hh;
};
RecurrentArgs checked_args(RecurrentCell cell, const py::handle& x_obj, const py::handle& h0_obj,
                           const py::handle& c0_obj, const py::handle& w_ih_obj, const py::handle& w_hh_obj,
                           const py::handle* b_ih_obj, const py::handle& b_hh_obj) {
  RecurrentArgs r;
  r.x = float_input(x_obj, "x", &r.dt);
  r.h0 = optional_input(h0_obj, "h0", r.dt);
  r.c0 = optional_input(c0_obj, "c0", r.dt);
  r.w_ih = float_input_like(w_ih_obj, "w_ih", r.dt, "x");
  r.w_hh = float_input_like(w_hh_obj, "w_hh", r.dt, "x");
  if (b_ih_obj) r.b_ih = optional_input(*b_ih_obj, "b_ih", r.dt);
  r.b_hh = optional_input(b_hh_obj, "b_hh", r.dt);

  check_ndim(r.x, "x", 3);
  RecurrentShape& s = r.s;
  s = {r.x.shape(0), r.x.shape(1), r.x.shape(2), 0, cell};
  if (s.T == 0)
    throw py::value_error(cat("x must have at least one time step (B, T, I) with T >= 1: there is no last step to "
                              "return; got shape ", shape_str(r.x)));
  check_ndim(r.w_hh, "w_hh", 2);
  s.H = r.w_hh.shape(1);
  const int64_t G = s.G();
  if (s.H < 1 || r.w_hh.shape(0) != G * s.H)
    throw py::value_error(cat("w_hh must have shape (", G, "*H, H) with H >= 1 for cell '", cell_name(cell), "' (", G,
                              " gate", G > 1 ? "s" : "", " per hidden unit), got ", shape_str(r.w_hh)));
  check_ndim(r.w_ih, "w_ih", 2);
  if (r.w_ih.shape(0) != s.GH() || r.w_ih.shape(1) != s.I)
    throw py::value_error(cat("w_ih must have shape (", s.GH(), ", ", s.I, ") (", G, "*H rows as w_hh (H = ", s.H,
                              "), x's ", s.I, " inputs as columns), got ", shape_str(r.w_ih)));
  check_lstm_only(r.c0, "c0", cell);
  check_optional_shape(r.h0, "h0", {s.B, s.H});
  check_optional_shape(r.c0, "c0", {s.B, s.H});
  if (b_ih_obj && r.b_ih.has_value() != r.b_hh.has_value())
    throw py::value_error(cat("b_ih and b_hh must both be arrays or both be None; got ", r.b_ih ? "an array" : "None",
                              " and ", r.b_hh ? "an array" : "None"));
  check_optional_shape(r.b_ih, "b_ih", {s.GH()});
  check_optional_shape(r.b_hh, "b_hh", {s.GH()});
  return r;
}

// n elements from a kernel's size function (-1: too large), uninitialised (the kernels write before they read).
template <typename T>
std::unique_ptr<T[]> workspace(int64_t n, const RecurrentArgs& r) {
  if (n < 0 || n > std::numeric_limits<int64_t>::max() / int64_t(sizeof(T)))
    throw py::value_error(cat("the recurrent layer's workspace for x of shape ", shape_str(r.x), " and H = ", r.s.H,
                              " is too large to allocate"));
  return std::unique_ptr<T[]>(n > 0 ? new T[size_t(n)] : nullptr);
}

// n: the backend's size of the record for r's shape (-1: too large).
int64_t checked_saved_size(const RecurrentArgs& r, int64_t n) {
  if (n < 0)
    throw py::value_error(cat("the recurrent layer's record for x of shape ", shape_str(r.x), " and H = ", r.s.H,
                              " is too large to allocate"));
  return n;
}

// cell, x (B,T,I), h0, c0 (B,H) or None, w_ih (G*H,I), w_hh (G*H,H), b_ih, b_hh (G*H) or None
//   -> (y (B,T,H), h_n (B,H), c_n (B,H) | None, saved (1-D))
py::tuple recurrent_forward_entry(const py::handle& cell_obj, const py::handle& x_obj, const py::handle& h0_obj,
                                  const py::handle& c0_obj, const py::handle& w_ih_obj, const py::handle& w_hh_obj,
                                  const py::handle& b_ih_obj, const py::handle& b_hh_obj,
                                  const py::handle& nonlinearity_obj) {
  const RecurrentCell cell = parse_cell(cell_obj, nonlinearity_obj);
  const RecurrentArgs r = checked_args(cell, x_obj, h0_obj, c0_obj, w_ih_obj, w_hh_obj, &b_ih_obj, b_hh_obj);
  const RecurrentShape& s = r.s;
  const bool lstm = cell == RecurrentCell::lstm;
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    py::array y = empty<T>({s.B, s.T, s.H}), h_n = empty<T>({s.B, s.H});
    py::array c_n = lstm ? py::array(empty<T>({s.B, s.H})) : py::array();
    py::array saved = empty<T>({checked_saved_size(r, recurrent_saved_size(s))});
    std::unique_ptr<T[]> ws = workspace<T>(recurrent_forward_workspace(s), r);
    {
      py::gil_scoped_release nogil;
      recurrent_forward<T>(ptr<T>(y), ptr<T>(h_n), lstm ? ptr<T>(c_n) : nullptr, ptr<T>(saved), ws.get(), ptr<T>(r.x),
                           ptr_or_null<T>(r.h0), ptr_or_null<T>(r.c0), ptr<T>(r.w_ih), ptr<T>(r.w_hh),
                           ptr_or_null<T>(r.b_ih), ptr_or_null<T>(r.b_hh), s);
    }
    return py::make_tuple(y, h_n, lstm ? py::object(c_n) : py::none(), saved);
  });
}

int64_t checked_bptt_steps(const py::handle& obj) {
  if (!py::isinstance<py::int_>(obj) || py::isinstance<py::bool_>(obj))
    throw py::type_error(cat("bptt_steps must be an int (0: full backpropagation through time), got ",
                             py::repr(obj).cast<std::string>()));
  const int64_t k = obj.cast<int64_t>();
  if (k < 0) throw py::value_error(cat("bptt_steps must be >= 0 (0: full backpropagation through time), got ", k));
  return k;
}

// The checks of a recurrent backward, shared by the CPU and CUDA entries: the forward's arguments (b_hh alone of
// the biases), grad_y (B,T,H), grad_h_n, grad_c_n (B,H) or None, y (B,T,H), bptt_steps, and saved: the record of
// `forward`, of saved_size(shape) elements (that backend's record).
struct RecurrentBackwardArgs {
  RecurrentArgs r;
  std::optional<py::array> dy, dh_n, dc_n;
  py::array y, saved;
  int64_t bptt_steps;
};
RecurrentBackwardArgs checked_backward_args(RecurrentCell cell, const py::handle& dy_obj, const py::handle& dh_n_obj,
                                            const py::handle& dc_n_obj, const py::handle& x_obj,
                                            const py::handle& h0_obj, const py::handle& c0_obj,
                                            const py::handle& w_ih_obj, const py::handle& w_hh_obj,
                                            const py::handle& b_hh_obj, const py::handle& y_obj,
                                            const py::handle& saved_obj, const py::handle& bptt_obj,
                                            int64_t (*saved_size)(const RecurrentShape&), const char* forward) {
  RecurrentBackwardArgs a{checked_args(cell, x_obj, h0_obj, c0_obj, w_ih_obj, w_hh_obj, nullptr, b_hh_obj)};
  const RecurrentArgs& r = a.r;
  const RecurrentShape& s = r.s;
  a.dy = optional_input(dy_obj, "grad_y", r.dt);
  a.dh_n = optional_input(dh_n_obj, "grad_h_n", r.dt);
  a.dc_n = optional_input(dc_n_obj, "grad_c_n", r.dt);
  a.y = float_input_like(y_obj, "y", r.dt, "x");
  a.saved = float_input_like(saved_obj, "saved", r.dt, "x");
  a.bptt_steps = checked_bptt_steps(bptt_obj);
  check_optional_shape(a.dy, "grad_y", {s.B, s.T, s.H});
  check_optional_shape(a.dh_n, "grad_h_n", {s.B, s.H});
  check_lstm_only(a.dc_n, "grad_c_n", cell);
  check_optional_shape(a.dc_n, "grad_c_n", {s.B, s.H});
  check_shape(a.y, "y", {s.B, s.T, s.H});
  const int64_t n_saved = checked_saved_size(r, saved_size(s));
  if (a.saved.ndim() != 1 || a.saved.shape(0) != n_saved)
    throw py::value_error(cat("saved must be ", forward, "'s record for cell '", cell_name(cell), "', x of shape ",
                              shape_str(r.x), " and H = ", s.H, ": shape (", n_saved, ",), got ", shape_str(a.saved)));
  return a;
}

// A record from another forward would give plausible, wrong gradients: its last h (last_h(b): batch row b's) must
// be y's last step.
template <typename T, typename LastH>
void check_record_of_y(const py::array& y, const RecurrentShape& s, LastH&& last_h) {
  for (int64_t b = 0; b < s.B; ++b)
    if (std::memcmp(last_h(b), ptr<T>(y) + (b * s.T + s.T - 1) * s.H, size_t(s.H) * sizeof(T)) != 0)
      throw py::value_error("saved is not the record of the forward that returned y (their last steps differ): pass "
                            "the y and saved of one recurrent_forward call, and do not change y in place");
}

// cell, grad_y (B,T,H) | None, grad_h_n, grad_c_n (B,H) | None, x, h0, c0, w_ih, w_hh, b_hh as the forward's,
// y and saved: the forward's -> (grad_x, grad_h0, grad_c0 | None, grad_w_ih, grad_w_hh, grad_b_ih | None,
// grad_b_hh | None)
py::tuple recurrent_backward_entry(const py::handle& cell_obj, const py::handle& dy_obj, const py::handle& dh_n_obj,
                                   const py::handle& dc_n_obj, const py::handle& x_obj, const py::handle& h0_obj,
                                   const py::handle& c0_obj, const py::handle& w_ih_obj, const py::handle& w_hh_obj,
                                   const py::handle& b_hh_obj, const py::handle& y_obj, const py::handle& saved_obj,
                                   const py::handle& nonlinearity_obj, const py::handle& bptt_obj) {
  const RecurrentCell cell = parse_cell(cell_obj, nonlinearity_obj);
  const RecurrentBackwardArgs a =
      checked_backward_args(cell, dy_obj, dh_n_obj, dc_n_obj, x_obj, h0_obj, c0_obj, w_ih_obj, w_hh_obj, b_hh_obj,
                            y_obj, saved_obj, bptt_obj, &recurrent_saved_size, "recurrent_forward");
  const RecurrentArgs& r = a.r;
  const RecurrentShape& s = r.s;
  const bool lstm = cell == RecurrentCell::lstm, has_bias = r.b_hh.has_value();
  return dispatch(r.dt, [&](auto tag) -> py::tuple {
    using T = decltype(tag);
    check_record_of_y<T>(a.y, s, [&](int64_t b) { return recurrent_saved_h<T>(ptr<T>(a.saved), s, s.T, b); });
    py::array dx = empty<T>({s.B, s.T, s.I}), dh0 = empty<T>({s.B, s.H});
    py::array dc0 = lstm ? py::array(empty<T>({s.B, s.H})) : py::array();
    py::array dw_ih = empty<T>({s.GH(), s.I}), dw_hh = empty<T>({s.GH(), s.H});
    py::array db_ih = has_bias ? py::array(empty<T>({s.GH()})) : py::array();
    py::array db_hh = has_bias ? py::array(empty<T>({s.GH()})) : py::array();
    const int threads = num_threads();  // the scratch slots the workspace has: the most threads the kernel runs
    std::unique_ptr<T[]> ws = workspace<T>(recurrent_backward_workspace(s, threads), r);
    {
      py::gil_scoped_release nogil;
      recurrent_backward<T>(ptr<T>(dx), ptr<T>(dh0), lstm ? ptr<T>(dc0) : nullptr, ptr<T>(dw_ih), ptr<T>(dw_hh),
                            has_bias ? ptr<T>(db_ih) : nullptr, has_bias ? ptr<T>(db_hh) : nullptr, ws.get(),
                            ptr_or_null<T>(a.dy), ptr_or_null<T>(a.dh_n), ptr_or_null<T>(a.dc_n), ptr<T>(r.x),
                            ptr<T>(r.w_ih), ptr<T>(r.w_hh), ptr<T>(a.saved), s, a.bptt_steps, threads, false);
    }
    auto maybe = [](bool present, const py::array& v) { return present ? py::object(v) : py::none(); };
    return py::make_tuple(dx, dh0, maybe(lstm, dc0), dw_ih, dw_hh, maybe(has_bias, db_ih), maybe(has_bias, db_hh));
  });
}

#if FUSEPROP_CUDA_COMPILED
// -- the CUDA twins: float32 first, the same checks, outputs allocated, then the device ------------------

// Device workspace of n floats (-1: too large), its size overflow-checked before the device is asked for.
size_t device_workspace_bytes(int64_t n, const RecurrentArgs& r) {
  if (n < 0 || n > std::numeric_limits<int64_t>::max() / int64_t(sizeof(float)))
    throw py::value_error(cat("the recurrent layer's workspace for x of shape ", shape_str(r.x), " and H = ", r.s.H,
                              " is too large to allocate"));
  return size_t(n) * sizeof(float);
}

// An optional host array's copy on the device (empty when None), and its device pointer (null when None).
cuda::DeviceBuffer to_device_or_empty(const std::optional<py::array>& a) {
  return a ? to_device(*a) : cuda::DeviceBuffer();
}
float* dptr(const cuda::DeviceBuffer& d, const std::optional<py::array>& a) { return a ? d.as<float>() : nullptr; }

// As recurrent_forward, tf32: the GEMMs on TF32 tensor cores. saved is the device kernels' own record
// (cuda/ops/recurrent_cuda.h), for cuda_recurrent_backward only.
py::tuple cuda_recurrent_forward_entry(const py::handle& cell_obj, const py::handle& x_obj, const py::handle& h0_obj,
                                       const py::handle& c0_obj, const py::handle& w_ih_obj, const py::handle& w_hh_obj,
                                       const py::handle& b_ih_obj, const py::handle& b_hh_obj,
                                       const py::handle& nonlinearity_obj, bool tf32) {
  require_f32(x_obj, "x");
  const RecurrentCell cell = parse_cell(cell_obj, nonlinearity_obj);
  const RecurrentArgs r = checked_args(cell, x_obj, h0_obj, c0_obj, w_ih_obj, w_hh_obj, &b_ih_obj, b_hh_obj);
  const RecurrentShape& s = r.s;
  const bool lstm = cell == RecurrentCell::lstm;
  py::array y = empty<float>({s.B, s.T, s.H}), h_n = empty<float>({s.B, s.H});
  py::array c_n = lstm ? py::array(empty<float>({s.B, s.H})) : py::array();
  py::array saved = empty<float>({checked_saved_size(r, cuda::recurrent_saved_size(s))});
  const size_t ws_bytes = device_workspace_bytes(cuda::recurrent_forward_workspace(s), r);
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_x = to_device(r.x), d_h0 = to_device_or_empty(r.h0), d_c0 = to_device_or_empty(r.c0),
                             d_w_ih = to_device(r.w_ih), d_w_hh = to_device(r.w_hh),
                             d_b_ih = to_device_or_empty(r.b_ih), d_b_hh = to_device_or_empty(r.b_hh);
    const cuda::DeviceBuffer d_y(size_t(y.nbytes())), d_h_n(size_t(h_n.nbytes())),
        d_c_n(lstm ? size_t(c_n.nbytes()) : 0), d_saved(size_t(saved.nbytes())), ws(ws_bytes);
    cuda::recurrent_forward(d_y.as<float>(), d_h_n.as<float>(), lstm ? d_c_n.as<float>() : nullptr,
                            d_saved.as<float>(), ws.as<float>(), d_x.as<float>(), dptr(d_h0, r.h0), dptr(d_c0, r.c0),
                            d_w_ih.as<float>(), d_w_hh.as<float>(), dptr(d_b_ih, r.b_ih), dptr(d_b_hh, r.b_hh), s,
                            tf32);
    d_y.copy_to_host(ptr<void>(y));
    d_h_n.copy_to_host(ptr<void>(h_n));
    if (lstm) d_c_n.copy_to_host(ptr<void>(c_n));
    d_saved.copy_to_host(ptr<void>(saved));
  }
  return py::make_tuple(y, h_n, lstm ? py::object(c_n) : py::none(), saved);
}

// As recurrent_backward, tf32: the GEMMs on TF32 tensor cores; y and saved: cuda_recurrent_forward's.
py::tuple cuda_recurrent_backward_entry(const py::handle& cell_obj, const py::handle& dy_obj,
                                        const py::handle& dh_n_obj, const py::handle& dc_n_obj,
                                        const py::handle& x_obj, const py::handle& h0_obj, const py::handle& c0_obj,
                                        const py::handle& w_ih_obj, const py::handle& w_hh_obj,
                                        const py::handle& b_hh_obj, const py::handle& y_obj,
                                        const py::handle& saved_obj, const py::handle& nonlinearity_obj,
                                        const py::handle& bptt_obj, bool tf32) {
  require_f32(x_obj, "x");
  const RecurrentCell cell = parse_cell(cell_obj, nonlinearity_obj);
  const RecurrentBackwardArgs a =
      checked_backward_args(cell, dy_obj, dh_n_obj, dc_n_obj, x_obj, h0_obj, c0_obj, w_ih_obj, w_hh_obj, b_hh_obj,
                            y_obj, saved_obj, bptt_obj, &cuda::recurrent_saved_size, "cuda_recurrent_forward");
  const RecurrentArgs& r = a.r;
  const RecurrentShape& s = r.s;
  const bool lstm = cell == RecurrentCell::lstm, has_bias = r.b_hh.has_value();
  const float* last_h = ptr<float>(a.saved) + cuda::recurrent_saved_last_h(s);  // h_last (B,H)
  check_record_of_y<float>(a.y, s, [&](int64_t b) { return last_h + b * s.H; });
  py::array dx = empty<float>({s.B, s.T, s.I}), dh0 = empty<float>({s.B, s.H});
  py::array dc0 = lstm ? py::array(empty<float>({s.B, s.H})) : py::array();
  py::array dw_ih = empty<float>({s.GH(), s.I}), dw_hh = empty<float>({s.GH(), s.H});
  py::array db_ih = has_bias ? py::array(empty<float>({s.GH()})) : py::array();
  py::array db_hh = has_bias ? py::array(empty<float>({s.GH()})) : py::array();
  const size_t ws_bytes = device_workspace_bytes(cuda::recurrent_backward_workspace(s), r);
  require_device();
  {
    py::gil_scoped_release nogil;
    const cuda::DeviceBuffer d_dy = to_device_or_empty(a.dy), d_dh_n = to_device_or_empty(a.dh_n),
                             d_dc_n = to_device_or_empty(a.dc_n), d_x = to_device(r.x), d_w_ih = to_device(r.w_ih),
                             d_w_hh = to_device(r.w_hh), d_saved = to_device(a.saved);
    const cuda::DeviceBuffer d_dx(size_t(dx.nbytes())), d_dh0(size_t(dh0.nbytes())),
        d_dc0(lstm ? size_t(dc0.nbytes()) : 0), d_dw_ih(size_t(dw_ih.nbytes())), d_dw_hh(size_t(dw_hh.nbytes())),
        d_db_ih(has_bias ? size_t(db_ih.nbytes()) : 0), d_db_hh(has_bias ? size_t(db_hh.nbytes()) : 0), ws(ws_bytes);
    cuda::recurrent_backward(d_dx.as<float>(), d_dh0.as<float>(), lstm ? d_dc0.as<float>() : nullptr,
                             d_dw_ih.as<float>(), d_dw_hh.as<float>(), has_bias ? d_db_ih.as<float>() : nullptr,
                             has_bias ? d_db_hh.as<float>() : nullptr, ws.as<float>(), dptr(d_dy, a.dy),
                             dptr(d_dh_n, a.dh_n), dptr(d_dc_n, a.dc_n), d_x.as<float>(), d_w_ih.as<float>(),
                             d_w_hh.as<float>(), d_saved.as<float>(), s, a.bptt_steps, tf32, false);
    d_dx.copy_to_host(ptr<void>(dx));
    d_dh0.copy_to_host(ptr<void>(dh0));
    if (lstm) d_dc0.copy_to_host(ptr<void>(dc0));
    d_dw_ih.copy_to_host(ptr<void>(dw_ih));
    d_dw_hh.copy_to_host(ptr<void>(dw_hh));
    if (has_bias) {
      d_db_ih.copy_to_host(ptr<void>(db_ih));
      d_db_hh.copy_to_host(ptr<void>(db_hh));
    }
  }
  auto maybe = [](bool present, const py::array& v) { return present ? py::object(v) : py::none(); };
  return py::make_tuple(dx, dh0, maybe(lstm, dc0), dw_ih, dw_hh, maybe(has_bias, db_ih), maybe(has_bias, db_hh));
}
#endif

}  // namespace

void bind_recurrent(py::module_& m) {
  m.def("recurrent_forward", &recurrent_forward_entry, "cell"_a, "x"_a, "h0"_a, "c0"_a, "w_ih"_a, "w_hh"_a, "b_ih"_a,
        "b_hh"_a, "nonlinearity"_a = "tanh",
        "(y, h_n, c_n | None, saved): one recurrent layer (rnn, lstm, gru) over x (B,T,I), batch-first");
  m.def("recurrent_backward", &recurrent_backward_entry, "cell"_a, "grad_y"_a, "grad_h_n"_a, "grad_c_n"_a, "x"_a,
        "h0"_a, "c0"_a, "w_ih"_a, "w_hh"_a, "b_hh"_a, "y"_a, "saved"_a, "nonlinearity"_a = "tanh", "bptt_steps"_a = 0,
        "(grad_x, grad_h0, grad_c0 | None, grad_w_ih, grad_w_hh, grad_b_ih | None, grad_b_hh | None): "
        "backpropagation through time, truncated every bptt_steps steps when > 0");
#if FUSEPROP_CUDA_COMPILED
  m.def("cuda_recurrent_forward", &cuda_recurrent_forward_entry, "cell"_a, "x"_a, "h0"_a, "c0"_a, "w_ih"_a, "w_hh"_a,
        "b_ih"_a, "b_hh"_a, "nonlinearity"_a = "tanh", "tf32"_a = false, "recurrent_forward on the device (float32)");
  m.def("cuda_recurrent_backward", &cuda_recurrent_backward_entry, "cell"_a, "grad_y"_a, "grad_h_n"_a, "grad_c_n"_a,
        "x"_a, "h0"_a, "c0"_a, "w_ih"_a, "w_hh"_a, "b_hh"_a, "y"_a, "saved"_a, "nonlinearity"_a = "tanh",
        "bptt_steps"_a = 0, "tf32"_a = false, "recurrent_backward on the device (float32)");
#endif
}

}  // namespace fuseprop::bindings
