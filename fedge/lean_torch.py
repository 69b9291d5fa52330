"""Adam without loading ``torch._dynamo`` (71 MiB and ~1 s on a device's first round).

Eager-mode torch only imports its compiler stack, ``torch._dynamo``, because three
optimiser entry points guard themselves against being compiled:

* ``Optimizer.add_param_group`` (called by ``__init__``) and ``Optimizer.zero_grad``
  are wrapped by ``torch._compile._disable_dynamo``, whose wrapper imports
  ``torch._dynamo`` on its first call, builds ``torch._dynamo.disable(fn)`` and
  caches it as ``fn.__dynamo_disable``;
* ``Adam.step`` is wrapped by ``torch.optim.optimizer._use_grad_for_differentiable``,
  which imports ``torch._dynamo`` on every call to place two graph breaks (no-ops
  outside ``torch.compile``) around the step run with grad mode off; and by the
  profiler hook ``Optimizer.profile_hook_step`` (step pre/post hooks).

:func:`avoid_dynamo_import` pre-sets the cache of the first two to the undecorated
function, which is what the wrapper calls in eager mode anyway; :func:`adam_step`
runs the undecorated ``step`` under ``torch.no_grad()``. The arithmetic is the same
functions on the same tensors (``torch.optim.adam.adam``), so results are bit for
bit those of ``optimizer.step()`` (tested).

Both are guarded: they act only on wrappers whose code objects are the ones the
installed torch builds (so a future torch that changes them gets the plain calls,
and only the memory back), and only while ``torch._dynamo`` is not loaded (a
process that compiles keeps torch's behaviour). What is given up: optimiser step
pre/post hooks and the profiler's ``Optimizer.step#`` range for these steps, which
fedge never registers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import CodeType
from typing import Any

import torch
from torch._compile import _disable_dynamo
from torch.optim import Optimizer
from torch.optim.optimizer import _use_grad_for_differentiable

__all__ = ["adam_step", "avoid_dynamo_import", "dynamo_loaded"]

_CACHE_ATTR = "__dynamo_disable"  # the attribute torch._compile's wrapper caches into


def _probe() -> None:
    """A function to wrap, to learn the code objects of torch's wrappers."""


def _code(wrapper: Callable[..., Any]) -> CodeType | None:
    return getattr(wrapper, "__code__", None)


# The code of the wrappers this module knows how to step around.
_DISABLE_CODE = _code(_disable_dynamo(_probe))
_GRAD_CODE = _code(_use_grad_for_differentiable(_probe))
_HOOK_CODE = _code(Optimizer.profile_hook_step(_probe))


def dynamo_loaded() -> bool:
    """Whether ``torch._dynamo`` has been imported in this process."""
    return "torch._dynamo" in sys.modules


def avoid_dynamo_import() -> bool:
    """Let ``Optimizer.__init__`` / ``zero_grad`` run without importing ``torch._dynamo``.

    Returns True if both are now free of it; False if ``torch._dynamo`` is already
    loaded (nothing to save, torch's behaviour kept) or the wrappers are not the
    ones this module knows (a torch version that changed them).
    """
    if dynamo_loaded():
        return False
    ok = True
    for name in ("add_param_group", "zero_grad"):
        wrapper = getattr(Optimizer, name)
        inner = getattr(wrapper, "__wrapped__", None)
        if _code(wrapper) is not _DISABLE_CODE or inner is None:
            ok = False
            continue
        if getattr(inner, _CACHE_ATTR, None) is None:
            # What the wrapper calls from now on: the function itself, as eager mode would.
            setattr(inner, _CACHE_ATTR, inner)
    return ok


def _undecorated_step(optimiser: Optimizer) -> Callable[[Optimizer], Any] | None:
    """``type(optimiser).step`` without the profiler hook and the grad-mode wrapper."""
    step: Callable[..., Any] = type(optimiser).step
    if _code(step) is _HOOK_CODE:
        step = getattr(step, "__wrapped__", step)
    if _code(step) is not _GRAD_CODE:
        return None
    inner = getattr(step, "__wrapped__", None)
    return inner if callable(inner) else None


def adam_step(optimiser: Optimizer) -> None:
    """``optimiser.step()`` for an optimiser whose step is torch's ``_use_grad`` wrapper
    (Adam and most of ``torch.optim``), without importing ``torch._dynamo``.

    Falls back to ``optimiser.step()`` when ``torch._dynamo`` is loaded already, the
    step is not wrapped as expected, or the optimiser is ``differentiable``.
    """
    inner = None
    if not dynamo_loaded() and not optimiser.defaults.get("differentiable", False):
        inner = _undecorated_step(optimiser)
    if inner is None:
        optimiser.step()
        return
    # The wrapper's own work, minus the graph breaks: grad mode = "differentiable" (off).
    with torch.no_grad():
        inner(optimiser)
