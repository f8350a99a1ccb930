"""What a backward may use: the tapes of forwards and the ties of gradients.

A forward records what its backward needs (its tape), unless recording
is off (no_grad: predict and evaluate run under it), and numbers its recorded forwards; a backward
uses the tape once. The gradient a loss computes is tied to the forward whose output it came from
(fuseprop.losses calls tie_gradient), so a module's backward handed the gradient of its own output
from another forward (a later one, or one under no_grad) raises instead of returning numbers computed
from another batch's inputs. A gradient the caller made itself carries no tie and is trusted. Modules
with parameters (Linear, Sequential) use a tape once: a second backward would add its gradients twice.

This module imports nothing of fuseprop: layers (nn) and losses both build on it.
"""
from __future__ import annotations

import threading
import weakref

__all__ = ["no_grad", "enable_grad", "recording", "record_forward", "last_forward", "tie_gradient", "check_tape",
           "CONSUMED"]

_state = threading.local()
CONSUMED = "consumed"  # a tape whose backward has run
_OUTPUTS = {}  # id(output) -> (weakref to it, weakref to the module, its forward number or None under no_grad)
_GRADIENTS = {}  # id(gradient) -> (weakref to it, (weakref to the module, forward number) or None)


def recording() -> bool:
    return getattr(_state, "recording", True)


class no_grad:
    """``with fuseprop.nn.no_grad(): ...`` runs forwards that record nothing for backward and leave the
    last recorded forward's tape as it was (as torch.no_grad); predict and evaluate run under it."""

    def __enter__(self):
        self._previous = recording()
        _state.recording = False
        return self

    def __exit__(self, *exc):
        _state.recording = self._previous
        return False


class enable_grad(no_grad):
    """``with enable_grad(): ...`` records forwards even inside no_grad (as torch.enable_grad): a caller
    that will run the backward itself (fuseprop.torch) needs the tape whatever the caller's mode."""

    def __enter__(self):
        self._previous = recording()
        _state.recording = True
        return self


def _remember(table, obj, value):
    """table[id(obj)] = (weakref to obj, value), dropped when obj is freed; silently skipped for objects
    that take no weak reference."""
    key = id(obj)
    try:
        ref = weakref.ref(obj, lambda _, key=key: table.pop(key, None))
    except TypeError:
        return
    table[key] = (ref, value)


def _recall(table, obj):
    entry = table.get(id(obj))
    return entry[1] if entry is not None and entry[0]() is obj else None


def record_forward(module, output):
    """Numbers a forward of module and ties its output to it; returns the number (None under no_grad)."""
    number = None
    if recording():
        number = module.__dict__.get("_forward_number", 0) + 1
        object.__setattr__(module, "_forward_number", number)
    _remember(_OUTPUTS, output, (weakref.ref(module), number))
    return number


def last_forward(module):
    """The number of module's last recorded forward (None when it numbers none)."""
    return module.__dict__.get("_forward_number")


def tie_gradient(gradient, output):
    """A loss's gradient belongs to the forward that produced output (when a module's forward did)."""
    tie = _recall(_OUTPUTS, output)
    if tie is not None:
        _remember(_GRADIENTS, gradient, tie)


def check_tape(module, tape, number, grad_out):
    """Raises unless module's backward may use its tape for grad_out."""
    name = type(module).__name__
    if tape is None:
        raise RuntimeError(f"{name}.backward called before forward")
    if tape is CONSUMED:
        raise RuntimeError(f"{name}.backward called twice for one forward: its gradients were added already "
                           "(run the forward again before another backward)")
    tie = _recall(_GRADIENTS, grad_out)
    if tie is not None and tie[0]() is module and tie[1] != number:
        # The gradient of this module's own output, from a forward other than the one on the tape. (A
        # gradient tied to another module's output, such as a container's whose last layer this is, may
        # hold the right values, so it is trusted, as an untied one is.)
        why = ("by a forward that recorded nothing (under no_grad: predict, evaluate)" if tie[1] is None
               else "by another forward than the last recorded one")
        raise RuntimeError(f"{name}.backward was given the gradient of an output produced {why}: it would "
                           "combine that gradient with another batch's inputs. Run the forward again, then the "
                           "loss, then backward")
