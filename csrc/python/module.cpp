// The compiled module _C. csrc/python/ is the only folder that knows Python: one file per family of
// entry points (bind.h lists them), CPU and CUDA together. Each entry point validates its arguments once (type, dtype,
// ndim, shape, C-contiguity, alignment, writeability, overlap, values where they matter), allocates
// its outputs, releases the GIL and forwards raw pointers to a kernel. Nothing is converted
// implicitly: an array in the wrong form is an error that names the argument, what was expected
// and what came, and nothing is written before every check has passed.
// The checks they share are python/checks.h's. DeviceArray is registered first: a function that takes or
// returns one names its Python class in its signature only when the class exists before it.
#include <pybind11/pybind11.h>

#include "python/bind.h"

PYBIND11_MODULE(_C, m) {
  using namespace fuseprop::bindings;
  m.doc() = "fuseprop native kernels (CPU). Validate, allocate, release the GIL, forward.";
  bind_runtime_info(m);
#if FUSEPROP_CUDA_COMPILED
  bind_device_array(m);
  bind_dlpack(m);
#endif
  bind_matmul(m);
  bind_activations(m);
  bind_linear(m);
  bind_conv(m);
  bind_losses(m);
  bind_optim(m);
  bind_norm(m);
  bind_recurrent(m);
#if FUSEPROP_CUDA_COMPILED
  bind_fused_mlp(m);
  bind_gather(m);
#endif
  bind_plan(m);
}
