// cuda_fused_mlp_forward_backward and cuda_fused_mlp_forward: the fused MLP kernel (cuda/plan/fused_mlp.h) on host arrays.
#include <optional>
#include <vector>

#include "python/bind.h"
#include "python/checks.h"
#include "cuda/plan/fused_mlp.h"


namespace fuseprop::bindings {

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

// The checks of a fused MLP pass: x (B,IN) float32 with B >= 1 and IN >= 1; weights[l] (OUT_l, IN_l) with IN_0 = IN
// and IN_l = OUT_{l-1}; biases[l] (OUT_l,) or None; activations[l] a name, the last one "identity"; and what the
// fused kernel needs besides (1 to 8 layers, each at most 128 wide), each failure a ValueError saying why.
struct FusedMlpArgs {
  py::array x;
  std::vector<py::array> w;
  std::vector<std::optional<py::array>> b;
  std::vector<cuda::FusedLayer> layers;  // the device pointers are filled in later
  int64_t B;
};
FusedMlpArgs checked_fused_mlp_args(const py::handle& x_obj, const py::sequence& weights, const py::sequence& biases,
                                    const py::sequence& activations, double slope) {
  FusedMlpArgs r;
  require_f32(x_obj, "x");
  r.x = float_input(x_obj, "x");
  check_ndim(r.x, "x", 2);
  r.B = r.x.shape(0);
  if (r.B == 0) throw py::value_error("x must have at least one row (a non-empty batch), got shape " + shape_str(r.x));
  if (r.x.shape(1) == 0) throw py::value_error("x must have at least one feature, got shape " + shape_str(r.x));
  check_finite_scalar(slope, "negative_slope");
  const size_t n = py::len(weights);
  if (py::len(biases) != n || py::len(activations) != n)
    throw py::value_error(cat("weights, biases and activations must have one entry per layer; got ", n, ", ",
                              py::len(biases), " and ", py::len(activations)));
  if (n < 1 || n > size_t(cuda::kFusedMlpMaxLayers))
    throw py::value_error(cat("the fused MLP takes 1 to ", cuda::kFusedMlpMaxLayers, " layers, got ", n));
  int64_t in = r.x.shape(1);
  for (size_t l = 0; l < n; ++l) {
    const std::string wn = cat("weights[", l, "]"), bn = cat("biases[", l, "]");
    require_f32(weights[l], wn.c_str());
    py::array w = float_input(weights[l], wn.c_str());
    check_ndim(w, wn.c_str(), 2);
    if (w.shape(1) != in)
      throw py::value_error(cat(wn, " must have shape (out_features, ", in, ") to take ", l ? "the layer before's output" : "x",
                                ", got ", shape_str(w)));
    const int64_t out = w.shape(0);
    if (out < 1 || out > cuda::kFusedMlpMaxWidth)
      throw py::value_error(cat("the fused MLP takes layers 1 to ", cuda::kFusedMlpMaxWidth, " wide; ", wn, " has shape ",
                                shape_str(w)));
    std::optional<py::array> b;
    if (!biases[l].is_none()) {
      require_f32(biases[l], bn.c_str());
      b = float_input(biases[l], bn.c_str());
      check_shape(*b, bn.c_str(), {out});
    }
    const Activation act = parse_activation(activations[l].cast<std::string>());
    if (l + 1 == n && act != Activation::identity)
      throw py::value_error(cat("the fused MLP's last layer gives the logits, so its activation must be 'identity', got '",
                                activations[l].cast<std::string>(), "'"));
    r.layers.push_back({nullptr, nullptr, nullptr, nullptr, in, out, act, float(slope)});
    r.w.push_back(w);
    r.b.push_back(b);
    in = out;
  }
  if (!cuda::fused_mlp_supported(r.layers.data(), int(n)))  // the checks above are its conditions
    throw py::value_error("the fused MLP does not take this network");
  return r;
}

// The layers' parameters on the device, and their gradients' buffers; fills r.layers' pointers.
struct FusedMlpDevice {
  std::vector<cuda::DeviceBuffer> w, b, dw, db;
  FusedMlpDevice(FusedMlpArgs& r, bool grads) {
    for (size_t l = 0; l < r.layers.size(); ++l) {
      cuda::FusedLayer& L = r.layers[l];
      w.push_back(to_device(r.w[l]));
      b.push_back(r.b[l] ? to_device(*r.b[l]) : cuda::DeviceBuffer());
      dw.emplace_back(grads ? size_t(r.w[l].nbytes()) : 0);
      db.emplace_back(grads && r.b[l] ? size_t(r.b[l]->nbytes()) : 0);
      L.w = w.back().as<float>(), L.b = b.back().as<float>(), L.dw = dw.back().as<float>(), L.db = db.back().as<float>();
    }
  }
};

// x (B,IN), labels (B) in [0, C), weights / biases / activations per layer ->
// (loss, correct, [grad_weight (OUT_l, IN_l)], [grad_bias (OUT_l,) or None]); the gradients are the batch's own.
py::tuple cuda_fused_mlp_forward_backward_entry(const py::handle& x_obj, const py::handle& labels_obj,
                                                const py::sequence& weights, const py::sequence& biases,
                                                const py::sequence& activations, double slope, double label_smoothing,
                                                const std::string& reduction, bool tf32) {
  FusedMlpArgs r = checked_fused_mlp_args(x_obj, weights, biases, activations, slope);
  const int64_t C = r.layers.back().out;
  const py::array labels = checked_labels(labels_obj, r.B, C);
  check_range(label_smoothing, "label_smoothing", 0.0, 1.0, true);
  const bool mean = parse_reduction(reduction);
  std::vector<py::array> dw, db;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    dw.push_back(empty<float>({r.layers[l].out, r.layers[l].in}));
    db.push_back(r.b[l] ? py::array(empty<float>({r.layers[l].out})) : py::array());
  }
  require_device();
  double total = 0;
  int64_t correct = 0;
  {
    py::gil_scoped_release nogil;
    FusedMlpDevice dev(r, true);
    const cuda::DeviceBuffer d_x = to_device(r.x), d_labels = to_device(labels), d_total(sizeof(double)),
                             d_correct(sizeof(int64_t));
    const int n = int(r.layers.size());
    const cuda::DeviceBuffer workspace(cuda::fused_mlp_workspace_bytes(r.layers.data(), n, r.B));
    cuda::fused_mlp_forward_backward(d_total.as<double>(), d_correct.as<int64_t>(), r.layers.data(), n, d_x.as<float>(),
                                     d_labels.as<int64_t>(), r.B, float(label_smoothing),
                                     mean ? float(1.0 / double(r.B)) : 1.f, workspace.as<void>(), tf32);
    d_total.copy_to_host(&total);
    d_correct.copy_to_host(&correct);
    for (size_t l = 0; l < r.layers.size(); ++l) {
      dev.dw[l].copy_to_host(ptr<void>(dw[l]));
      if (r.b[l]) dev.db[l].copy_to_host(ptr<void>(db[l]));
    }
  }
  py::list dws, dbs;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    dws.append(dw[l]);
    dbs.append(r.b[l] ? py::object(db[l]) : py::none());
  }
  return py::make_tuple(mean ? total / double(r.B) : total, correct, dws, dbs);
}

// x (B,IN), weights / biases / activations per layer -> logits (B, C)
py::array cuda_fused_mlp_forward_entry(const py::handle& x_obj, const py::sequence& weights, const py::sequence& biases,
                                       const py::sequence& activations, double slope, bool tf32) {
  FusedMlpArgs r = checked_fused_mlp_args(x_obj, weights, biases, activations, slope);
  py::array logits = empty<float>({r.B, r.layers.back().out});
  require_device();
  {
    py::gil_scoped_release nogil;
    FusedMlpDevice dev(r, false);
    const int n = int(r.layers.size());
    const cuda::DeviceBuffer d_x = to_device(r.x), d_logits(size_t(logits.nbytes())),
                             workspace(cuda::fused_mlp_workspace_bytes(r.layers.data(), n, r.B));
    cuda::fused_mlp_forward(d_logits.as<float>(), r.layers.data(), n, d_x.as<float>(), r.B, workspace.as<void>(), tf32);
    d_logits.copy_to_host(ptr<void>(logits));
  }
  return logits;
}

}  // namespace

void bind_fused_mlp(py::module_& m) {
  m.def("cuda_fused_mlp_forward_backward", &cuda_fused_mlp_forward_backward_entry, "x"_a, "labels"_a, "weights"_a,
        "biases"_a, "activations"_a, "negative_slope"_a = 0.01, "label_smoothing"_a = 0.0, "reduction"_a = "mean",
        "tf32"_a = false, "the whole network's forward, cross-entropy and backward in one fused kernel (cuda/fused_mlp.h)");
  m.def("cuda_fused_mlp_forward", &cuda_fused_mlp_forward_entry, "x"_a, "weights"_a, "biases"_a, "activations"_a,
        "negative_slope"_a = 0.01, "tf32"_a = false, "the fused kernel's forward pass only: the logits");
}

}  // namespace fuseprop::bindings
