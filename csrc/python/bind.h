// The pieces of the module _C: each bind_* adds one family's functions and classes, CPU and CUDA entries
// together (the CUDA ones only when the CUDA backend is compiled). module.cpp calls them.
#pragma once

#include <pybind11/pybind11.h>

namespace fuseprop::bindings {

void bind_runtime_info(pybind11::module_& m);  // runtime_info.cpp
void bind_matmul(pybind11::module_& m);        // bind_matmul.cpp
void bind_activations(pybind11::module_& m);   // bind_activations.cpp
void bind_linear(pybind11::module_& m);        // bind_linear.cpp
void bind_conv(pybind11::module_& m);          // bind_conv.cpp (conv2d and 2-D pooling)
void bind_losses(pybind11::module_& m);        // bind_losses.cpp
void bind_optim(pybind11::module_& m);         // bind_optim.cpp
void bind_plan(pybind11::module_& m);          // bind_plan.cpp
void bind_norm(pybind11::module_& m);          // bind_norm.cpp
void bind_recurrent(pybind11::module_& m);     // bind_recurrent.cpp (rnn, lstm, gru)
#if FUSEPROP_CUDA_COMPILED
void bind_device_array(pybind11::module_& m);  // device_array.cpp
void bind_dlpack(pybind11::module_& m);        // dlpack.cpp
void bind_fused_mlp(pybind11::module_& m);     // bind_fused_mlp.cpp
void bind_gather(pybind11::module_& m);        // bind_gather.cpp
#endif

}  // namespace fuseprop::bindings
