"""Check incoming updates against the model before they touch any accumulator.

An update comes from a satellite we do not control, so it is checked whole
before anything is added: the tensor names, every shape and dtype, and (for
dense updates) the absence of NaN and Inf.  A compressed update arrives
already checked for finite values and in-range, increasing indices by
``CompressedUpdate.from_wire``, which refuses anything else before the update
exists.  All problems of one update are collected and reported in one
``UpdateRejected`` whose ``reason`` is the short code of the first (the daemon
counts rejections by reason and sends it back in its NACK).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ground import _strategies as S

BARE = ""  # the tensor name a bare array travels under inside a session


class UpdateRejected(ValueError):
    """An update failed validation and was not aggregated.

    ``reason`` is a short machine code: ``type``, ``names``, ``shape``,
    ``dtype``, ``nonfinite``, ``samples``, ``weight`` or ``stale``; ``value``
    is the offending value where there is one.
    """

    def __init__(self, message: str, reason: str, value: Any = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.value = value


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one model tensor."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def is_compressed(update: Any) -> bool:
    """True for a compressed update from ``agent`` (duck-typed, no import)."""
    return (
        hasattr(update, "add_to")
        and hasattr(update, "decompress")
        and hasattr(update, "tensors")
    )


class Template:
    """The names, shapes and dtypes every update of a session must match.

    ``bare`` records that the model was a single array (kept under the name
    ``""``), so results can be handed back in the form they came in.
    ``acc_dtype`` is the accumulator dtype: the widest model dtype, at least
    float32, so a float16 model still sums in float32.
    """

    def __init__(self, tensors: dict[str, TensorSpec], bare: bool) -> None:
        self.tensors = tensors
        self.bare = bare
        self.acc_dtype = np.result_type(
            np.float32, *(spec.dtype for spec in tensors.values())
        )
        self.size = sum(spec.size for spec in tensors.values())

    def dense_flat(self, update: Any, *, copy: bool) -> dict[str, np.ndarray]:
        """Return the update as flat dense arrays in model order.

        With ``copy`` the arrays are new, owned, in the accumulator dtype;
        without, they may be views of the caller's data in its own dtype.
        """
        if is_compressed(update):
            dense = update.decompress()
            if not isinstance(dense, Mapping):
                (only,) = declared(update)
                dense = {only: dense}
            mapping = compressed_names(update, self)
            update = {mapping[name]: a for name, a in dense.items()}
        elif not isinstance(update, Mapping):
            update = {BARE: update}
        out = {}
        for name in self.tensors:
            a = np.asarray(update[name]).reshape(-1)
            out[name] = np.array(a, dtype=self.acc_dtype) if copy else a
        return out

    def shaped(self, flat: dict[str, np.ndarray]) -> Any:
        """Return flat arrays reshaped to the model, bare or as a dict."""
        out = {
            name: flat[name].reshape(spec.shape) for name, spec in self.tensors.items()
        }
        return out[BARE] if self.bare else out


def template_of(model: Any, what: str = "model") -> Template:
    """Return the template of a model (a dict of float arrays or one array).

    A compressed update serves too: its declared tensors become the template.
    """
    if is_compressed(model):
        tensors = declared(model)
        if len(tensors) == 1 and getattr(model, "kind", "") == "array":
            ((shape, dtype),) = tensors.values()
            return Template({BARE: TensorSpec(shape, dtype)}, True)
        return Template({n: TensorSpec(*sd) for n, sd in tensors.items()}, False)
    bare = not isinstance(model, Mapping)
    items = {BARE: model} if bare else model
    if not items:
        raise ValueError(f"the {what} has no tensors; expected at least one array")
    tensors = {}
    problems = []
    for name, value in items.items():
        if not isinstance(name, str):
            problems.append(f"tensor name {name!r} is not a str")
            continue
        a = np.asarray(value)
        if a.dtype.kind != "f":
            problems.append(
                f"tensor {name!r} has dtype {a.dtype}; expected a float dtype"
            )
            continue
        tensors[name] = TensorSpec(tuple(int(d) for d in a.shape), a.dtype)
    if problems:
        raise ValueError(f"the {what} is not usable: " + "; ".join(problems))
    return Template(tensors, bare)


def declared(update: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Return name -> (shape, dtype) of a compressed update's tensors.

    ``CompressedUpdate.tensors`` gives ``(shape, dtype name)`` pairs; objects
    with ``shape`` and ``dtype`` attributes are accepted as well.
    """
    out = {}
    for name, entry in update.tensors.items():
        if isinstance(entry, tuple):
            shape, dtype = entry
        else:
            shape, dtype = entry.shape, entry.dtype
        out[name] = (tuple(int(d) for d in shape), np.dtype(dtype))
    return out


def compressed_names(update: Any, template: Template) -> dict[str, str]:
    """Map a compressed update's tensor names to the model's.

    The same names, except that an update of one array (``kind`` "array",
    sent under the compressor's single-tensor name) maps onto a model that is
    one array.
    """
    names = list(update.tensors)
    if template.bare and len(names) == 1 and getattr(update, "kind", "") == "array":
        return {names[0]: BARE}
    return {name: name for name in names}


def _compressed_problems(update: Any, template: Template) -> list[tuple[str, str, Any]]:
    """Check a compressed update's declared tensors without decompressing it.

    Values and indices need no check here: ``CompressedUpdate`` refuses NaN
    and Inf when it compresses and checks every value and index (range,
    order) when it is decoded from the wire, before it exists.
    """
    tensors = declared(update)
    mapping = compressed_names(update, template)
    problems: list[tuple[str, str, Any]] = []
    missing = [n for n in template.tensors if n not in mapping.values()]
    extra = [n for n, m in mapping.items() if m not in template.tensors]
    if missing or extra:
        problems.append(
            (
                "names",
                f"tensor names differ from the model: missing {missing}, "
                f"unexpected {extra}",
                (missing, extra),
            )
        )
    for name, model_name in mapping.items():
        if model_name not in template.tensors:
            continue
        spec = template.tensors[model_name]
        shape, dtype = tensors[name]
        label = "the update" if template.bare else f"tensor {name!r}"
        if dtype.kind != "f" or dtype.itemsize > spec.dtype.itemsize:
            problems.append(
                (
                    "dtype",
                    f"{label} has dtype {dtype}; expected a float dtype no wider "
                    f"than the model's {spec.dtype}",
                    str(dtype),
                )
            )
        if tuple(shape) != spec.shape:
            problems.append(
                (
                    "shape",
                    f"{label} has shape {tuple(shape)}; expected {spec.shape}",
                    tuple(shape),
                )
            )
    return problems


def _dense_problems(update: Any, template: Template) -> list[tuple[str, str, Any]]:
    problems: list[tuple[str, str, Any]] = []
    if template.bare:
        if isinstance(update, Mapping):
            return [("type", "the update is a dict but the model is one array", None)]
        items = {BARE: update}
    elif isinstance(update, Mapping):
        items = update
    else:
        return [
            (
                "type",
                f"the update is a {type(update).__name__}; expected a dict of "
                f"arrays named {list(template.tensors)} or a compressed update",
                type(update).__name__,
            )
        ]
    missing = [n for n in template.tensors if n not in items]
    extra = [n for n in items if n not in template.tensors]
    if missing or extra:
        problems.append(
            (
                "names",
                f"tensor names differ from the model: missing {missing}, "
                f"unexpected {extra}",
                (missing, extra),
            )
        )
    for name, spec in template.tensors.items():
        if name not in items:
            continue
        a = np.asarray(items[name])
        label = "the update" if template.bare else f"tensor {name!r}"
        if a.dtype.kind != "f" or a.dtype.itemsize > spec.dtype.itemsize:
            problems.append(
                (
                    "dtype",
                    f"{label} has dtype {a.dtype}; expected a float dtype no "
                    f"wider than the model's {spec.dtype}",
                    str(a.dtype),
                )
            )
            continue
        if a.shape != spec.shape:
            problems.append(
                (
                    "shape",
                    f"{label} has shape {a.shape}; expected {spec.shape}",
                    a.shape,
                )
            )
            continue
        count, first = S.count_nonfinite(a.reshape(-1))
        if count:
            problems.append(
                (
                    "nonfinite",
                    f"{label} has {count} NaN/Inf values, the first at "
                    f"flat index {first}",
                    count,
                )
            )
    return problems


def check_update(update: Any, template: Template, label: str = "update") -> None:
    """Raise ``UpdateRejected`` listing every problem of ``update``, if any."""
    if is_compressed(update):
        problems = _compressed_problems(update, template)
    else:
        problems = _dense_problems(update, template)
    if problems:
        reason, _, value = problems[0]
        message = f"{label} rejected: " + "; ".join(p[1] for p in problems)
        raise UpdateRejected(message, reason, value)
