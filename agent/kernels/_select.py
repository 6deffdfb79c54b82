"""Choose between the compiled kernels and their NumPy twins.

``ORBITFL_KERNELS`` picks the backend for the whole process:

- unset, empty or ``auto``: compiled where it was built, else NumPy (logged
  once, at WARNING, the first time a kernel module is missing);
- ``compiled``: compiled or an ImportError that says why;
- ``numpy``: always the NumPy twins.

Every kernel module has a twin with the same signatures and the same results;
this module only decides which one a facade binds to.
"""

import logging
import os
from importlib import import_module
from types import ModuleType

logger = logging.getLogger(__name__)

ENV_VAR = "ORBITFL_KERNELS"
_CHOICES = ("auto", "compiled", "numpy")
_warned = False


def requested() -> str:
    """Return the backend asked for in the environment: auto, compiled or numpy."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(
            f"{ENV_VAR}={value!r} is not a known kernel backend; "
            f"expected one of {', '.join(_CHOICES)}"
        )
    return value


def load_compiled(name: str) -> ModuleType | None:
    """Import compiled kernel module ``agent.kernels.<name>`` if it may be used.

    Return None when the NumPy twin should serve instead.
    """
    global _warned
    choice = requested()
    if choice == "numpy":
        return None
    try:
        return import_module(f"agent.kernels.{name}")
    except ImportError as exc:
        if choice == "compiled":
            raise ImportError(
                f"{ENV_VAR}=compiled but the compiled kernel agent.kernels.{name} "
                f"cannot be imported ({exc}); reinstall with a C compiler "
                "(pip install -e .) or set ORBITFL_KERNELS=numpy"
            ) from exc
        if not _warned:
            _warned = True
            logger.warning(
                "compiled kernels are not available (%s); running on the NumPy "
                "twins, which are several times slower",
                exc,
            )
        return None
