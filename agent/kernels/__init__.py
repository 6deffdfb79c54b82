"""The agent's compression kernels: compiled where built, NumPy twin otherwise.

``agent.kernels.accelerated`` is True when the compiled compression kernels
are in use.  The kernel functions (``ef_topk``, ``quantize``, ...) are looked
up on the active backend; :func:`backends` returns every available backend,
which is how the test suite runs against both.

Importing this package is cheap: the backend is chosen on first use, so a
sibling module (the routing kernel) can be imported without loading these.
"""

from types import ModuleType
from typing import Any

from agent.kernels._compress_errors import NonFiniteError

KERNELS = (
    "count_nonfinite",
    "topk",
    "ef_topk",
    "threshold_topk",
    "ef_threshold_topk",
    "randomk_indices",
    "randomk",
    "ef_randomk",
    "quantize",
    "ef_quantize",
    "dequantize",
    "sign",
    "ef_sign",
    "unsign",
    "scatter_add",
    "add_dequantized",
    "add_signs",
    "pack_indices",
    "unpack_indices",
)

__all__ = ["KERNELS", "NonFiniteError", "accelerated", "backend", "backends"]

_backend: ModuleType | None = None


def backend() -> ModuleType:
    """Return the module whose kernels are in use (chosen once per process)."""
    global _backend
    if _backend is None:
        from agent.kernels import _compress_twin
        from agent.kernels._select import load_compiled

        _backend = load_compiled("_compress") or _compress_twin
    return _backend


def backends() -> dict[str, ModuleType]:
    """Return {"numpy": twin, "compiled": module} for every backend importable.

    Ignores ``ORBITFL_KERNELS``: this is for tests and benchmarks that compare
    the two.
    """
    from importlib import import_module

    from agent.kernels import _compress_twin

    found = {"numpy": _compress_twin}
    try:
        found["compiled"] = import_module("agent.kernels._compress")
    except ImportError:
        pass
    return found


def __getattr__(name: str) -> Any:
    if name == "accelerated":
        from agent.kernels import _compress_twin

        return backend() is not _compress_twin
    if name in KERNELS:
        return getattr(backend(), name)
    raise AttributeError(f"module 'agent.kernels' has no attribute {name!r}")
