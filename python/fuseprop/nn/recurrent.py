"""RNN, LSTM and GRU, shaped like torch.nn's: the same parameters (weight_ih_l{k}, weight_hh_l{k},
bias_ih_l{k}, bias_hh_l{k}), shapes, gate order (LSTM: input, forget, cell, output; GRU: reset, update,
new) and initialisation, so state dicts trade with torch.nn as they are. Trained by backpropagation
through time in native code (fuseprop.functional.recurrent_forward / recurrent_backward).

Where the defaults differ from PyTorch's, and why:
- ``batch_first=True``: input (B, T, I), as the rest of fuseprop (and Keras) lays out a batch; pass
  ``batch_first=False`` for PyTorch's (T, B, I).
- ``return_sequences=False``: the layer returns the last step of the last layer, (B, H), so
  ``Sequential(nn.LSTM(28, 128), nn.Linear(128, 10))`` is a sequence classifier; ``return_sequences=True``
  returns every step, (B, T, H) (PyTorch's ``output``). ``forward_with_state`` returns PyTorch's pair
  (output, h_n) or (output, (h_n, c_n)) as well.
- ``bptt_steps``: truncated backpropagation through time (no gradient flows back across a multiple of
  bptt_steps), an option PyTorch leaves to the training loop (detaching the state).
"""
from __future__ import annotations

import math

import numpy as np

from .. import _random
from .. import functional as F
from .. import init
from .._arrays import Parameter, as_input, float_dtype
from .._tape import recording
from .module import Module, cpu_only

__all__ = ["RNN", "LSTM", "GRU"]


# Rows per native call when no backward can follow (no_grad, predict, evaluate): each call's record of the cells'
# values (about 7 H T floats a row for an LSTM) is dropped right after it, so inference on a whole dataset at
# once takes the memory of this many rows, not of all of them. Every row's values are its own, whatever the
# batch around it: the outputs are the same bits as one call.
_INFERENCE_ROWS = 256


def _count(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class _Recurrent(Module):
    """What RNN, LSTM and GRU share: layers stacked (each layer's sequence is the next one's input), each
    one native forward and one native backward over the whole sequence."""

    _cell = ""  # the functional API's name of the cell
    _gates = 1  # gate blocks in the weights: G * hidden_size rows

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, return_sequences: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, nonlinearity: str = "tanh", bptt_steps: int = 0, dtype=np.float32,
                 generator=None):
        super().__init__()
        if dropout:
            raise NotImplementedError(f"dropout between recurrent layers is not supported, got dropout={dropout!r}: "
                                      "put an nn.Dropout after the layer instead")
        if bidirectional:
            raise NotImplementedError("bidirectional recurrent layers are not supported")
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        dt = float_dtype(dtype)
        self.input_size = _count(input_size, "input_size")
        self.hidden_size = _count(hidden_size, "hidden_size")
        self.num_layers = _count(num_layers, "num_layers")
        self.bptt_steps = _count(bptt_steps, "bptt_steps", 0)
        self.bias, self.batch_first, self.return_sequences = bool(bias), bool(batch_first), bool(return_sequences)
        self.nonlinearity = nonlinearity
        rows = self._gates * self.hidden_size
        # torch's order: per layer weight_ih, weight_hh, bias_ih, bias_hh (the state dict's order too)
        for k in range(self.num_layers):
            fan_in = self.input_size if k == 0 else self.hidden_size
            setattr(self, f"weight_ih_l{k}", Parameter(np.empty((rows, fan_in), dt)))
            setattr(self, f"weight_hh_l{k}", Parameter(np.empty((rows, self.hidden_size), dt)))
            if self.bias:
                setattr(self, f"bias_ih_l{k}", Parameter(np.empty(rows, dt)))
                setattr(self, f"bias_hh_l{k}", Parameter(np.empty(rows, dt)))
        self._dtype = dt
        self._saved = None
        self.grad_h0 = self.grad_c0 = None
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        """PyTorch's: every weight and bias uniform in +-1/sqrt(hidden_size)."""
        gen = _random.resolve(generator)
        bound = 1.0 / math.sqrt(self.hidden_size)
        for _, p in self.named_parameters():
            init.uniform_(p, -bound, bound, generator=gen)

    def _layer_params(self, k):
        """(w_ih, w_hh, b_ih, b_hh) of layer k, the biases None without bias."""
        get = self._parameters.get
        return (get(f"weight_ih_l{k}"), get(f"weight_hh_l{k}"), get(f"bias_ih_l{k}"), get(f"bias_hh_l{k}"))

    # -- the initial states, as torch takes them: h0 (num_layers, B, H); LSTM (h0, c0)
    def _initial_states(self, hx, batch):
        if hx is None:
            return [None] * self.num_layers, [None] * self.num_layers
        if self._cell == "lstm":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx of an LSTM must be a pair (h0, c0), got {type(hx).__name__}")
            h0, c0 = (self._state(a, name, batch) for a, name in zip(hx, ("h0", "c0")))
            return list(h0), list(c0)
        return list(self._state(hx, "hx", batch)), [None] * self.num_layers

    def _state(self, a, name, batch):
        a = as_input(a, self._dtype, name)
        want = (self.num_layers, batch, self.hidden_size)
        if a.ndim == 2 and self.num_layers == 1 and a.shape == want[1:]:
            a = a[None]
        if a.shape != want:
            raise ValueError(f"{name} must have shape (num_layers, batch, hidden_size) = {want}, got {a.shape}")
        return [np.ascontiguousarray(a[k]) for k in range(self.num_layers)]

    # -- forward
    def forward(self, x, hx=None):
        return self.forward_with_state(x, hx)[0]

    def forward_with_state(self, x, hx=None):
        """(output, h_n) or, for an LSTM, (output, (h_n, c_n)): output as forward returns it, the final states
        (num_layers, B, H) as PyTorch returns them. A backward after it takes the output's gradient only."""
        cpu_only(self, "forward")
        x = as_input(x, self._dtype, "x", ndim=3)
        if x.shape[2] != self.input_size:
            raise ValueError(f"x must have {self.input_size} features in its last dimension "
                             f"({'(B, T, I)' if self.batch_first else '(T, B, I)'}), got shape {x.shape}")
        seq = x if self.batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))  # (B, T, I)
        if seq.shape[1] == 0:
            raise ValueError(f"x must have at least one time step, got shape {x.shape}")
        h0s, c0s = self._initial_states(hx, seq.shape[0])
        if recording():
            tape, seq, h_n, c_n = self._layers_forward(seq, h0s, c0s)
        else:  # nothing to keep for a backward: a block of rows at a time, so the cells' records stay small
            tape, blocks = None, []
            for r in range(0, max(len(seq), 1), _INFERENCE_ROWS):  # an empty batch: one empty call
                rows = slice(r, r + _INFERENCE_ROWS)
                blocks.append(self._layers_forward(seq[rows], [None if h is None else h[rows] for h in h0s],
                                                   [None if c is None else c[rows] for c in c0s])[1:])
            seq, h_n, c_n = (np.concatenate([b[0] for b in blocks]),
                             [np.concatenate([b[1][k] for b in blocks]) for k in range(self.num_layers)],
                             [None if blocks[0][2][k] is None else np.concatenate([b[2][k] for b in blocks])
                              for k in range(self.num_layers)])
        out = seq if self.return_sequences else h_n[-1]
        if self.return_sequences and not self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        out = self._keep(out, (tape, out.shape, hx is not None))
        h_n = np.stack(h_n)
        return out, ((h_n, np.stack(c_n)) if self._cell == "lstm" else h_n)

    def _layers_forward(self, seq, h0s, c0s):
        """(tape, the last layer's sequence, h_n and c_n per layer) of the stacked layers over seq (B, T, I)."""
        tape, h_n, c_n = [], [], []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)
            y, h, c, saved = F.recurrent_forward(self._cell, seq, h0s[k], c0s[k], w_ih.data, w_hh.data,
                                                 None if b_ih is None else b_ih.data,
                                                 None if b_hh is None else b_hh.data, self.nonlinearity)
            tape.append((seq, h0s[k], c0s[k], y, saved))
            h_n.append(h)
            c_n.append(c)
            seq = y
        return tape, seq, h_n, c_n

    # -- backward through time
    def backward(self, grad_out):
        return self._backward(grad_out, True)

    def _backward(self, grad_out, need_input_grad: bool = True, done=None):
        cpu_only(self, "backward")
        tape, out_shape, had_state = self._kept(grad_out)
        grad_out = as_input(grad_out, self._dtype, "grad_out")
        if grad_out.shape != out_shape:
            raise ValueError(f"grad_out must have shape {out_shape}, got {grad_out.shape}")
        if self.return_sequences:
            grad_y = grad_out if self.batch_first else np.ascontiguousarray(grad_out.transpose(1, 0, 2))
            grad_h_n = None
        else:  # the output is the last layer's final state
            grad_y, grad_h_n = None, grad_out
        grad_h0s, grad_c0s = [None] * self.num_layers, [None] * self.num_layers
        for k in range(self.num_layers - 1, -1, -1):
            seq, h0, c0, y, saved = tape[k]
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)
            grads = F.recurrent_backward(self._cell, grad_y, grad_h_n, None, seq, h0, c0, w_ih.data, w_hh.data,
                                         None if b_hh is None else b_hh.data, y, saved, self.nonlinearity,
                                         self.bptt_steps)
            grad_x, grad_h0s[k], grad_c0s[k] = grads[:3]
            for p, g in zip((w_ih, w_hh, b_ih, b_hh), grads[3:]):
                if p is not None:
                    p.grad += g
            grad_y, grad_h_n = grad_x, None
        self._spend()  # after the checks: a refused grad_out leaves the tape for a corrected call
        if had_state:  # the initial states' gradients, (num_layers, B, H) as they were given
            self.grad_h0 = np.stack(grad_h0s)
            self.grad_c0 = np.stack(grad_c0s) if self._cell == "lstm" else None
        if done is not None:
            done(self)
        if not need_input_grad:
            return None
        return grad_y if self.batch_first else np.ascontiguousarray(grad_y.transpose(1, 0, 2))

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self._cell == "rnn" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            s += ", bias=False"
        if not self.batch_first:
            s += ", batch_first=False"
        if self.return_sequences:
            s += ", return_sequences=True"
        if self.bptt_steps:
            s += f", bptt_steps={self.bptt_steps}"
        return s


class RNN(_Recurrent):
    """The Elman network, torch.nn.RNN: h_t = nonlinearity(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), nonlinearity
    "tanh" (default) or "relu"."""

    _cell, _gates = "rnn", 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = True, return_sequences: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, bptt_steps: int = 0, dtype=np.float32, generator=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, return_sequences, dropout,
                         bidirectional, nonlinearity=nonlinearity, bptt_steps=bptt_steps, dtype=dtype,
                         generator=generator)


class LSTM(_Recurrent):
    """Long short-term memory, torch.nn.LSTM: gates i, f, g, o (rows 0:H, H:2H, 2H:3H, 3H:4H of the weights),
    c_t = f * c_{t-1} + i * g, h_t = o * tanh(c_t)."""

    _cell, _gates = "lstm", 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, return_sequences: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, bptt_steps: int = 0, dtype=np.float32, generator=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, return_sequences, dropout,
                         bidirectional, bptt_steps=bptt_steps, dtype=dtype, generator=generator)


class GRU(_Recurrent):
    """Gated recurrent unit, torch.nn.GRU: gates r, z, n (rows 0:H, H:2H, 2H:3H), n = tanh(W_in x + b_in +
    r * (W_hn h + b_hn)), h_t = (1 - z) * n + z * h_{t-1}."""

    _cell, _gates = "gru", 3

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = True, return_sequences: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, *, bptt_steps: int = 0, dtype=np.float32, generator=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, return_sequences, dropout,
                         bidirectional, bptt_steps=bptt_steps, dtype=dtype, generator=generator)
