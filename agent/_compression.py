"""Gradient compression with error feedback: the satellite's side.

A :class:`FederatedClient` turns each round's gradients into a
:class:`CompressedUpdate` under a :class:`CompressionConfig`, keeping one
error-feedback residual per named tensor: what a round does not send is added
to the next round's gradient (Seide et al. 2014; Karimireddy et al. 2019), so
nothing is lost, only delayed.  The residuals can be saved and restored, so an
agent that reboots keeps them.

The arithmetic runs in :mod:`agent.kernels` (compiled, or the NumPy twin).
"""

import os
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from agent import kernels
from agent._arrays import ArrayFormatError, pack_array, unpack_array, unpack_bounded
from agent._compression_config import CompressionConfig, CompressionType
from agent._compression_update import (
    SINGLE_TENSOR_NAME,
    CompressedUpdate,
    TensorPayload,
    UpdateFormatError,
    derive_seed,
    work_dtype,
)

__all__ = [
    "CompressedUpdate",
    "CompressionConfig",
    "CompressionType",
    "FederatedClient",
    "UpdateFormatError",
    "derive_seed",
]

STATE_FORMAT = "orbitfl.client_state"
STATE_VERSION = 1
MAX_STATE_BYTES = 1 << 32
MAX_NODE_ID_LEN = 256


def _normalize(gradients: Any) -> tuple[str, list[tuple[str, tuple, np.dtype, Any]]]:
    """Return (kind, [(name, shape, dtype, array)]) for an array, list or dict."""
    if isinstance(gradients, dict):
        items = list(gradients.items())
        kind = "dict"
    else:
        items = [(SINGLE_TENSOR_NAME, gradients)]
        kind = "array"
    out = []
    problems = []
    for name, value in items:
        if not isinstance(name, str) or not name:
            problems.append(f"tensor name {name!r} must be a non-empty str")
            continue
        a = np.asarray(value)
        if a.dtype.kind != "f" or a.dtype not in (np.float16, np.float32, np.float64):
            problems.append(
                f"tensor {name!r} has dtype {a.dtype}; expected float16, float32 "
                "or float64"
            )
            continue
        out.append((name, tuple(int(d) for d in a.shape), a.dtype.newbyteorder("="), a))
    if problems:
        raise ValueError("cannot compress: " + "; ".join(problems))
    return kind, out


def _narrow(vals: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast values to the wire dtype, saturating instead of overflowing to Inf."""
    if vals.dtype == dtype:
        return vals
    if dtype.itemsize < vals.dtype.itemsize:
        big = np.finfo(dtype).max
        vals = np.clip(vals, -big, big)
    return vals.astype(dtype)


class FederatedClient:
    """Compress a satellite's gradients round after round, with error feedback."""

    def __init__(self, node_id: str, config: CompressionConfig | None = None) -> None:
        if not isinstance(node_id, str) or not 0 < len(node_id) <= MAX_NODE_ID_LEN:
            raise ValueError(
                f"node_id {node_id!r} must be a non-empty str of at most "
                f"{MAX_NODE_ID_LEN} characters"
            )
        config = CompressionConfig() if config is None else config
        if not isinstance(config, CompressionConfig):
            raise TypeError(
                f"config must be a CompressionConfig, got {type(config).__name__}"
            )
        if config.unbiased_scaling and config.error_feedback:
            raise ValueError(
                "unbiased_scaling multiplies sent values by n/k, which error "
                "feedback would then carry back as a huge negative residual; "
                "use one or the other"
            )
        self.node_id = node_id
        self.config = config
        self._residuals: dict[str, np.ndarray] = {}

    @property
    def residuals(self) -> dict[str, np.ndarray]:
        """Read-only views of the error-feedback residuals, flat, by tensor name."""
        out = {}
        for name, r in self._residuals.items():
            v = r.view()
            v.flags.writeable = False
            out[name] = v
        return out

    def reset(self) -> None:
        """Forget every residual (e.g. after the model was replaced)."""
        self._residuals.clear()

    def compress(self, gradients: Any, *, round_index: int = 0) -> CompressedUpdate:
        """Compress one round's gradients and update the residuals.

        ``gradients`` is one array (any shape, flattened), a list of floats, or
        a dict of named arrays.  A NaN or Inf anywhere raises ValueError naming
        the tensor, the count and the first index; then no residual changes.
        """
        if isinstance(round_index, bool) or not isinstance(round_index, int):
            raise TypeError(f"round_index must be an int, got {round_index!r}")
        if round_index < 0:
            raise ValueError(f"round_index {round_index} must be >= 0")
        kind, items = _normalize(gradients)
        cfg = self.config
        flats = []
        problems = []
        for name, _shape, dtype, a in items:
            flat = np.ascontiguousarray(a.reshape(-1), dtype=work_dtype(dtype))
            if flat.size > 2**32 - 1:
                problems.append(f"tensor {name!r} has {flat.size} elements (> 2**32-1)")
            r = self._residuals.get(name)
            if (
                cfg.error_feedback
                and r is not None
                and (r.size != flat.size or r.dtype != flat.dtype)
            ):
                problems.append(
                    f"tensor {name!r} has {flat.size} {flat.dtype} elements but its "
                    f"residual from earlier rounds has {r.size} {r.dtype}; call "
                    "reset() if the model changed"
                )
            flats.append(flat)
        if problems:
            raise ValueError("cannot compress: " + "; ".join(problems))

        # One kernel call per tensor checks its own gradient before writing;
        # with several tensors, check them all first so that a NaN in the last
        # leaves the first tensor's residual unchanged too.
        if (
            len(items) > 1
            or cfg.method is CompressionType.NONE
            or not (cfg.error_feedback)
        ):
            bad = []
            for (name, *_), flat in zip(items, flats, strict=True):
                count, first = kernels.count_nonfinite(flat)
                if count:
                    bad.append(
                        f"tensor {name!r} has {count} non-finite values (NaN or "
                        f"Inf), the first at flat index {first}"
                    )
            if bad:
                raise ValueError(
                    "; ".join(bad) + "; nothing was compressed and the residuals "
                    "are unchanged"
                )

        payloads = []
        for (name, shape, dtype, _), flat in zip(items, flats, strict=True):
            try:
                payloads.append(
                    self._compress_one(name, shape, dtype, flat, round_index)
                )
            except kernels.NonFiniteError as exc:
                raise kernels.NonFiniteError(
                    exc.count, exc.first_index, what=f"gradient tensor {name!r}"
                ) from None
        return CompressedUpdate(
            node_id=self.node_id,
            round_index=round_index,
            config=cfg,
            kind=kind,
            tensors=payloads,
        )

    def _residual(self, name: str, flat: np.ndarray) -> np.ndarray:
        r = self._residuals.get(name)
        if r is None:
            r = np.zeros(flat.size, flat.dtype)
            self._residuals[name] = r
        return r

    def _compress_one(self, name, shape, dtype, g, round_index) -> TensorPayload:
        cfg = self.config
        kb = kernels.backend()
        n = g.size
        method = cfg.method
        vd = np.dtype(cfg.value_dtype)
        ef = cfg.error_feedback
        p = TensorPayload(name=name, shape=shape, dtype=np.dtype(dtype), k=n)
        if n == 0:
            return _empty_payload(p, method, cfg)
        r = self._residual(name, g) if ef else None
        k = cfg.kept(n)

        def seed(purpose: str) -> int:
            return derive_seed(purpose, self.node_id, round_index, name)

        if method is CompressionType.NONE:
            if ef:
                big = np.finfo(r.dtype).max
                with np.errstate(over="ignore"):
                    acc = np.clip(r + g, -big, big)
                p.values = _narrow(acc, vd)
                r[...] = acc - p.values.astype(r.dtype)
            else:
                p.values = _narrow(g, vd)
            return p

        if method in (CompressionType.TOPK, CompressionType.THRESHOLD_TOPK):
            if method is CompressionType.TOPK:
                idx, vals = kb.ef_topk(r, g, k) if ef else kb.topk(g, k)
            else:
                s = seed("threshold")
                idx, vals = (
                    kb.ef_threshold_topk(r, g, k, s)
                    if ef
                    else kb.threshold_topk(g, k, s)
                )
            p.k, p.idx, p.values = idx.size, idx, _narrow(vals, vd)
            if ef and p.values.dtype != vals.dtype:
                r[idx] += vals - p.values.astype(vals.dtype)
            return p

        if method is CompressionType.RANDOMK:
            s = seed("randomk")
            unbiased = cfg.unbiased_scaling
            vals = (
                kb.ef_randomk(r, g, k, s, unbiased)
                if ef
                else kb.randomk(g, k, s, unbiased)
            )
            p.k, p.values = vals.size, _narrow(vals, vd)
            if ef and p.values.dtype != vals.dtype:
                idx = kb.randomk_indices(n, k, s)
                r[idx] += vals - p.values.astype(vals.dtype)
            return p

        bits, chunk, stoch = cfg.bits, cfg.chunk_size, cfg.stochastic_rounding
        if method is CompressionType.QUANTIZE:
            s = seed("rounding")
            p.codes, p.amax = (
                kb.ef_quantize(r, g, bits, chunk, stoch, s)
                if ef
                else kb.quantize(g, bits, chunk, stoch, s)
            )
            return p

        if method is CompressionType.TOPK_QUANTIZE:
            idx, vals = kb.ef_topk(r, g, k) if ef else kb.topk(g, k)
            p.codes, p.amax = kb.quantize(vals, bits, chunk, stoch, seed("rounding"))
            if ef:
                r[idx] = vals - kb.dequantize(p.codes, p.amax, idx.size, bits, chunk)
            p.k, p.idx = idx.size, idx
            return p

        if method is CompressionType.SIGN:
            p.codes, p.scale = kb.ef_sign(r, g) if ef else kb.sign(g)
            return p

        raise AssertionError(f"unhandled compression type {method}")

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Return the residuals and settings as a msgpack-ready dict."""
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "node_id": self.node_id,
            "config": self.config.to_dict(),
            "residuals": {name: pack_array(r) for name, r in self._residuals.items()},
        }

    def load_state_dict(self, state: Any) -> None:
        """Restore residuals saved by :meth:`state_dict`, validating them all."""
        if not isinstance(state, dict):
            raise ValueError(f"client state must be a map, got {type(state).__name__}")
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(
                f"client state has format {state.get('format')!r} version "
                f"{state.get('version')!r}; expected {STATE_FORMAT!r} version "
                f"{STATE_VERSION}"
            )
        if state.get("node_id") != self.node_id:
            raise ValueError(
                f"client state belongs to node {state.get('node_id')!r}, not "
                f"{self.node_id!r}"
            )
        raw = state.get("residuals")
        if not isinstance(raw, dict):
            raise ValueError("client state has no 'residuals' map")
        restored = {}
        for name, packed in raw.items():
            try:
                r = unpack_array(packed)
            except ArrayFormatError as exc:
                raise ValueError(f"residual {name!r}: {exc}") from exc
            if (
                not isinstance(name, str)
                or r.ndim != 1
                or r.dtype
                not in (
                    np.float32,
                    np.float64,
                )
            ):
                raise ValueError(
                    f"residual {name!r} must be a flat float32/float64 array, got "
                    f"{r.ndim}-D {r.dtype}"
                )
            count, first = kernels.count_nonfinite(r)
            if count:
                raise ValueError(
                    f"residual {name!r} holds {count} non-finite values (first at "
                    f"index {first}); the saved state is corrupt"
                )
            restored[name] = np.array(r, dtype=r.dtype.newbyteorder("="))
        self._residuals = restored

    def save_state(self, path: str | os.PathLike) -> None:
        """Write the state atomically: temp file, fsync, rename, fsync the dir."""
        path = Path(path)
        data = msgpack.packb(self.state_dict(), use_bin_type=True)
        fd, tmp = tempfile.mkstemp(
            prefix=path.name + ".", suffix=".tmp", dir=path.parent
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load_state(self, path: str | os.PathLike) -> None:
        """Restore the state written by :meth:`save_state`."""
        data = Path(path).read_bytes()
        if len(data) > MAX_STATE_BYTES:
            raise ValueError(f"state file {path} is {len(data)} bytes; too large")
        n = len(data)
        state = unpack_bounded(
            data,
            ValueError,
            f"state file {path} is not valid msgpack",
            max_bin_len=n,
            max_str_len=n,
            max_array_len=n,
            max_map_len=n,
        )
        self.load_state_dict(state)


def _empty_payload(p: TensorPayload, method: CompressionType, cfg) -> TensorPayload:
    """The payload of a zero-element tensor for every method."""
    wd = work_dtype(p.dtype)
    p.k = 0
    if method in (CompressionType.QUANTIZE, CompressionType.TOPK_QUANTIZE):
        p.codes, p.amax = np.zeros(0, np.uint8), np.zeros(0, wd)
        if method is CompressionType.TOPK_QUANTIZE:
            p.idx = np.zeros(0, np.uint32)
    elif method is CompressionType.SIGN:
        p.codes, p.scale = np.zeros(0, np.uint8), 0.0
    else:
        p.values = np.zeros(0, np.dtype(cfg.value_dtype))
        if method in (CompressionType.TOPK, CompressionType.THRESHOLD_TOPK):
            p.idx = np.zeros(0, np.uint32)
    return p
