"""Model patches: the coordinates of the global model that changed, and their values.

A satellite that holds global model version ``h`` needs only the coordinates
that changed since ``h`` to reach version ``v``.  With sparse client updates
(1 % top-k from a handful of agents per step) that is a small fraction of the
model, so the ground sends a *patch* instead of the full weights: per tensor,
the flat indices (uint32, strictly increasing) where ``v`` differs from ``h``
bit for bit, and ``v``'s values there.  Replacing values, rather than adding a
difference, keeps the result bit-identical to the ground's model: ``h + (v -
h)`` is not ``v`` in floating point.

The patch carries the CRC-32 of the whole resulting model (:func:`model_crc32`:
names, dtypes, shapes and bytes, in name order), so an agent whose held model
is not what the ground thinks detects it, drops the patch, and asks for the
full weights.
"""

import zlib
from collections.abc import Mapping

import numpy as np

# Compare this many elements at a time, so the boolean temporary stays small
# next to a model of hundreds of megabytes.
_DIFF_CHUNK = 1 << 20


def model_crc32(weights: Mapping[str, np.ndarray]) -> int:
    """CRC-32 of a model: each tensor's name, dtype, shape and bytes, by name."""
    crc = 0
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        crc = zlib.crc32(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode(), crc)
        crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
    return crc


def changed_indices(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Flat indices (uint32, increasing) where ``new`` differs from ``old`` in bits.

    Bits, not values: -0.0 and 0.0 differ, so the patched model's CRC matches.
    """
    if old.shape != new.shape or old.dtype != new.dtype:
        raise ValueError(
            f"cannot diff a {old.dtype}{old.shape} tensor against a "
            f"{new.dtype}{new.shape} one"
        )
    if old.size >= 1 << 32:
        raise ValueError(f"a tensor of {old.size} elements is too large to patch")
    bits = np.dtype(f"u{old.dtype.itemsize}")
    a = np.ascontiguousarray(old).reshape(-1).view(bits)
    b = np.ascontiguousarray(new).reshape(-1).view(bits)
    parts = [
        np.flatnonzero(a[i : i + _DIFF_CHUNK] != b[i : i + _DIFF_CHUNK]) + i
        for i in range(0, a.size, _DIFF_CHUNK)
    ]
    if not parts:
        return np.empty(0, np.uint32)
    return np.concatenate(parts).astype(np.uint32)


def patched_model(
    held: Mapping[str, np.ndarray] | None, held_version: int, body: Mapping
) -> dict[str, np.ndarray]:
    """The model a patch MODEL body leads to from ``held`` (version ``held_version``).

    Raises ``ValueError`` when the patch is not from the held version or does
    not fit it (see :func:`apply_patch`); the agent then asks for the weights.
    """
    base = body["base_version"]
    if held is None or held_version != base:
        raise ValueError(
            f"patch from version {base} but the agent holds {held_version}"
        )
    return apply_patch(held, body["patch"], body["crc32"])


def apply_patch(
    held: Mapping[str, np.ndarray],
    patch: Mapping[str, tuple[np.ndarray, np.ndarray]],
    crc32: int,
) -> dict[str, np.ndarray]:
    """Return a new model: ``held`` with each patched coordinate replaced.

    ``held`` is left as it is.  Raises ``ValueError`` naming the tensor when
    the patch does not fit the held model (an unknown tensor, a dtype
    mismatch, an index past the end, indices not increasing) and when the
    result's CRC-32 is not ``crc32``, i.e. the held model was not the one the
    patch was made from; the caller then asks for the full weights.
    """
    unknown = sorted(map(repr, set(patch) - set(held)))
    if unknown:
        raise ValueError(
            f"model patch names tensor(s) {unknown} that the held model lacks "
            f"(it has {sorted(held)})"
        )
    # C order: the flat view below must be a view, not a copy.
    out = {name: np.array(a, copy=True, order="C") for name, a in held.items()}
    for name, (idx, values) in patch.items():
        flat = out[name].reshape(-1)
        if idx.ndim != 1 or values.ndim != 1 or idx.size != values.size:
            raise ValueError(
                f"model patch for {name!r}: {idx.size} indices and {values.size} "
                "values; expected two 1-D arrays of one length"
            )
        if values.dtype != flat.dtype:
            raise ValueError(
                f"model patch for {name!r} has {values.dtype} values but the held "
                f"tensor is {flat.dtype}"
            )
        if idx.size:
            if int(idx[-1]) >= flat.size:
                raise ValueError(
                    f"model patch for {name!r} writes index {int(idx[-1])} of a "
                    f"tensor of {flat.size} elements"
                )
            if idx.size > 1 and not bool(np.all(idx[1:] > idx[:-1])):
                raise ValueError(
                    f"model patch for {name!r}: indices must be strictly increasing"
                )
            flat[idx] = values
    got = model_crc32(out)
    if got != crc32:
        raise ValueError(
            f"patched model has CRC-32 {got:#010x} but the ground's is "
            f"{crc32:#010x}: the held model is not the patch's base; ask for the "
            "full weights"
        )
    return out
