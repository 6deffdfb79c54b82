"""Feed-forward networks from a model spec, run with NumPy on the flight computer.

A model spec is a JSON file describing a chain of layers plus an ``.npz``
file of named float32 weights (loaded with ``allow_pickle=False``)::

    {"format": "orbitfl-model/1", "name": "mlp", "input_shape": [784],
     "weights": "mlp.npz",
     "layers": [
       {"name": "fc1", "op": "dense", "weights": {"w": "fc1.w", "b": "fc1.b"}},
       {"name": "act1", "op": "relu"},
       {"name": "block", "op": "residual", "body": [...]},
       ...]}

Shapes are per sample; a batch adds a leading axis.  Operations:

* ``dense``: ``x @ w + b`` on the last axis, ``w`` of shape (in, out).
* ``conv2d``: NCHW input, ``w`` of shape (out, in, kh, kw), ``b`` (out,),
  integer ``stride`` and zero ``padding`` (cross-correlation, as in every
  deep-learning framework).
* ``relu``, ``gelu`` (``"approximate": "tanh"`` or ``"none"`` for the erf
  form), ``softmax`` and ``layernorm`` (``eps``, optional ``gamma``/``beta``)
  on the last axis, ``flatten`` (all axes after the batch).
* ``residual``: ``x + body(x)`` for a list of layers ``body`` whose output
  has the shape of its input.  A residual block is one layer of the chain,
  so a pipeline cut never separates the skip from its add.

``Model.forward(x, start, stop)`` runs the layer range ``[start, stop)``; a
stage of a partition plan is exactly such a range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SPEC_FORMAT = "orbitfl-model/1"
DTYPE = np.float32
_BYTES = np.dtype(DTYPE).itemsize


class ModelSpecError(ValueError):
    """A model spec or its weights are inconsistent; the message lists why."""


# -- elementary operations (shared with the tests' references) -----------------


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """GELU, x * Phi(x) (Hendrycks & Gimpel 2016).

    ``"none"`` is the exact erf form, with erf from Abramowitz & Stegun
    7.1.26 (absolute error below 1.5e-7, under float32 resolution near 1);
    ``"tanh"`` is the paper's tanh approximation.
    """
    x = np.asarray(x, dtype=DTYPE)
    if approximate == "tanh":
        inner = np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x**3)
        return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner))
    z = x.astype(np.float64) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * np.abs(z))
    poly = t * (
        0.254829592
        + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = np.sign(z) * (1.0 - poly * np.exp(-z * z))
    return (0.5 * x * (1.0 + erf)).astype(DTYPE)


def softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(
    x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: float
) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(eps))
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y.astype(DTYPE, copy=False)


def conv2d(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, padding: int
) -> np.ndarray:
    """Cross-correlate NCHW ``x`` with (out, in, kh, kw) ``w``, via strided windows."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = w.shape[2], w.shape[3]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (n, c, oh, ow, kh, kw)
    y = np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3]))  # (n, oh, ow, out)
    y = y.transpose(0, 3, 1, 2)
    if b is not None:
        y = y + b[None, :, None, None]
    return np.ascontiguousarray(y, dtype=DTYPE)


# -- layers ------------------------------------------------------------------------


class Layer:
    """One layer: its name, its output shape, its cost, and its forward pass."""

    op = ""

    def __init__(self, name: str, in_shape: tuple[int, ...]) -> None:
        self.name = name
        self.in_shape = in_shape
        self.out_shape = in_shape
        self.params: dict[str, np.ndarray] = {}

    @property
    def param_count(self) -> int:
        return sum(int(p.size) for p in self.params.values())

    def flops(self) -> float:
        """Flops per sample (a multiply-add counts two)."""
        return float(math.prod(self.out_shape))

    def activation_bytes(self) -> int:
        """Working memory per sample: the input and output buffers."""
        return (math.prod(self.in_shape) + math.prod(self.out_shape)) * _BYTES

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Dense(Layer):
    op = "dense"

    def __init__(self, name, in_shape, w, b):
        super().__init__(name, in_shape)
        if w.ndim != 2 or w.shape[0] != in_shape[-1]:
            raise ModelSpecError(
                f"dense layer {name!r}: weight shape {w.shape} does not take inputs "
                f"of shape {in_shape}; expected ({in_shape[-1]}, out)"
            )
        if b is not None and b.shape != (w.shape[1],):
            raise ModelSpecError(
                f"dense layer {name!r}: bias shape {b.shape}, expected ({w.shape[1]},)"
            )
        self.w, self.b = w, b
        self.params = {"w": w} | ({"b": b} if b is not None else {})
        self.out_shape = (*in_shape[:-1], w.shape[1])

    def flops(self) -> float:
        rows = math.prod(self.in_shape[:-1])
        return 2.0 * rows * self.w.shape[0] * self.w.shape[1]

    def __call__(self, x):
        y = x @ self.w
        return y + self.b if self.b is not None else y


class Conv2d(Layer):
    op = "conv2d"

    def __init__(self, name, in_shape, w, b, stride, padding):
        super().__init__(name, in_shape)
        problems = []
        if len(in_shape) != 3:
            problems.append(f"input shape {in_shape} is not (channels, height, width)")
        if w.ndim != 4:
            problems.append(f"weight shape {w.shape} is not (out, in, kh, kw)")
        elif len(in_shape) == 3 and w.shape[1] != in_shape[0]:
            problems.append(
                f"weight takes {w.shape[1]} channels, input has {in_shape[0]}"
            )
        if not (isinstance(stride, int) and stride >= 1):
            problems.append(f"stride={stride!r} must be an int >= 1")
        if not (isinstance(padding, int) and padding >= 0):
            problems.append(f"padding={padding!r} must be an int >= 0")
        if b is not None and w.ndim == 4 and b.shape != (w.shape[0],):
            problems.append(f"bias shape {b.shape}, expected ({w.shape[0]},)")
        if not problems:
            oh = (in_shape[1] + 2 * padding - w.shape[2]) // stride + 1
            ow = (in_shape[2] + 2 * padding - w.shape[3]) // stride + 1
            if oh < 1 or ow < 1:
                problems.append(f"kernel {w.shape[2:]} is larger than the padded input")
        if problems:
            raise ModelSpecError(f"conv2d layer {name!r}: " + "; ".join(problems))
        self.w, self.b, self.stride, self.padding = w, b, stride, padding
        self.params = {"w": w} | ({"b": b} if b is not None else {})
        self.out_shape = (w.shape[0], oh, ow)

    def flops(self) -> float:
        per_output = 2.0 * self.w.shape[1] * self.w.shape[2] * self.w.shape[3]
        return per_output * math.prod(self.out_shape)

    def __call__(self, x):
        return conv2d(x, self.w, self.b, self.stride, self.padding)


class Relu(Layer):
    op = "relu"

    def __call__(self, x):
        return np.maximum(x, np.float32(0.0))


class Gelu(Layer):
    op = "gelu"

    def __init__(self, name, in_shape, approximate="none"):
        super().__init__(name, in_shape)
        if approximate not in ("none", "tanh"):
            raise ModelSpecError(
                f"gelu layer {name!r}: approximate={approximate!r}, expected "
                "'none' or 'tanh'"
            )
        self.approximate = approximate

    def flops(self) -> float:
        return 10.0 * math.prod(self.out_shape)

    def __call__(self, x):
        return gelu(x, self.approximate)


class Softmax(Layer):
    op = "softmax"

    def flops(self) -> float:
        return 5.0 * math.prod(self.out_shape)

    def __call__(self, x):
        return softmax(x)


class LayerNorm(Layer):
    op = "layernorm"

    def __init__(self, name, in_shape, gamma, beta, eps=1e-5):
        super().__init__(name, in_shape)
        for label, p in (("gamma", gamma), ("beta", beta)):
            if p is not None and p.shape != (in_shape[-1],):
                raise ModelSpecError(
                    f"layernorm layer {name!r}: {label} shape {p.shape}, expected "
                    f"({in_shape[-1]},)"
                )
        self.gamma, self.beta, self.eps = gamma, beta, float(eps)
        self.params = {
            k: v for k, v in (("gamma", gamma), ("beta", beta)) if v is not None
        }

    def flops(self) -> float:
        return 8.0 * math.prod(self.out_shape)

    def __call__(self, x):
        return layernorm(x, self.gamma, self.beta, self.eps)


class Flatten(Layer):
    op = "flatten"

    def __init__(self, name, in_shape):
        super().__init__(name, in_shape)
        self.out_shape = (math.prod(in_shape),)

    def flops(self) -> float:
        return 0.0

    def __call__(self, x):
        return x.reshape(x.shape[0], -1)


class Residual(Layer):
    op = "residual"

    def __init__(self, name, in_shape, body: list[Layer]):
        super().__init__(name, in_shape)
        out = body[-1].out_shape if body else in_shape
        if out != in_shape:
            raise ModelSpecError(
                f"residual layer {name!r}: its body maps {in_shape} to {out}; a "
                "residual add needs the same shape"
            )
        self.body = body
        self.params = {
            f"{layer.name}.{k}": v for layer in body for k, v in layer.params.items()
        }

    def flops(self) -> float:
        return sum(layer.flops() for layer in self.body) + math.prod(self.out_shape)

    def activation_bytes(self) -> int:
        # the skip input stays alive while the body runs
        inner = max((layer.activation_bytes() for layer in self.body), default=0)
        return inner + math.prod(self.in_shape) * _BYTES

    def __call__(self, x):
        y = x
        for layer in self.body:
            y = layer(y)
        return x + y


# -- building a model from a spec ----------------------------------------------------


def _build(
    specs: Sequence[Mapping[str, Any]],
    in_shape: tuple[int, ...],
    weights: Mapping[str, np.ndarray],
    used: set[str],
    where: str,
) -> tuple[list[Layer], tuple[int, ...]]:
    layers: list[Layer] = []
    shape = in_shape
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping):
            raise ModelSpecError(f"{where} layer {i} is not an object: {spec!r}")
        name = spec.get("name", f"{spec.get('op')}{i}")
        op = spec.get("op")
        refs = spec.get("weights", {})

        def param(key: str, required: bool = True, *, _refs=refs, _name=name, _op=op):
            ref = _refs.get(key)
            if ref is None:
                if required:
                    raise ModelSpecError(
                        f"{_op} layer {_name!r} needs weights.{key}, the name of an "
                        "array in the .npz file"
                    )
                return None
            if ref not in weights:
                raise ModelSpecError(
                    f"{_op} layer {_name!r}: weights.{key}={ref!r} is not in the .npz "
                    f"file (it has {', '.join(sorted(weights)) or 'no arrays'})"
                )
            used.add(ref)
            return np.ascontiguousarray(weights[ref], dtype=DTYPE)

        if op == "dense":
            layer: Layer = Dense(name, shape, param("w"), param("b", False))
        elif op == "conv2d":
            layer = Conv2d(
                name,
                shape,
                param("w"),
                param("b", False),
                spec.get("stride", 1),
                spec.get("padding", 0),
            )
        elif op == "relu":
            layer = Relu(name, shape)
        elif op == "gelu":
            layer = Gelu(name, shape, spec.get("approximate", "none"))
        elif op == "softmax":
            layer = Softmax(name, shape)
        elif op == "layernorm":
            layer = LayerNorm(
                name, shape, param("gamma", False), param("beta", False),
                spec.get("eps", 1e-5),
            )  # fmt: skip
        elif op == "flatten":
            layer = Flatten(name, shape)
        elif op == "residual":
            body, _ = _build(spec.get("body", []), shape, weights, used, f"{name}:")
            layer = Residual(name, shape, body)
        else:
            raise ModelSpecError(
                f"{where} layer {i} ({name!r}) has op={op!r}; expected one of dense, "
                "conv2d, relu, gelu, softmax, layernorm, flatten, residual"
            )
        layers.append(layer)
        shape = layer.out_shape
    return layers, shape


class Model:
    """A chain of layers built from a spec; ``forward`` runs any layer range."""

    def __init__(
        self, spec: Mapping[str, Any], weights: Mapping[str, np.ndarray]
    ) -> None:
        if spec.get("format") != SPEC_FORMAT:
            raise ModelSpecError(
                f"model spec format is {spec.get('format')!r}; expected {SPEC_FORMAT!r}"
            )
        shape = spec.get("input_shape")
        if not (
            isinstance(shape, list)
            and shape
            and all(type(d) is int and d > 0 for d in shape)
        ):
            raise ModelSpecError(
                f"input_shape={shape!r} must be a list of positive ints (per sample)"
            )
        self.name = str(spec.get("name", "model"))
        self.input_shape = tuple(shape)
        used: set[str] = set()
        self.layers, self.output_shape = _build(
            spec.get("layers", []), self.input_shape, weights, used, "model"
        )
        if not self.layers:
            raise ModelSpecError("the model spec has no layers")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ModelSpecError(f"layer names repeat: {names}")
        self.spec = dict(spec)
        # arrays of the .npz no layer refers to: harmless, but usually a typo
        self.unused_weights = sorted(set(weights) - used)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def input_bytes(self) -> int:
        return math.prod(self.input_shape) * _BYTES

    def check_range(self, start: int, stop: int) -> None:
        if not (0 <= start < stop <= len(self.layers)):
            raise ValueError(
                f"layer range [{start}, {stop}) is not within the model's "
                f"{len(self.layers)} layers (need 0 <= start < stop <= "
                f"{len(self.layers)})"
            )

    def stage_shapes(self, start: int, stop: int) -> tuple[tuple, tuple]:
        """Per-sample input and output shapes of the layer range."""
        self.check_range(start, stop)
        return self.layers[start].in_shape, self.layers[stop - 1].out_shape

    def forward(
        self, x: np.ndarray, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """Run layers ``[start, stop)`` on the batch ``x`` (batch axis first)."""
        stop = len(self.layers) if stop is None else stop
        in_shape, _ = self.stage_shapes(start, stop)
        x = np.asarray(x)
        if x.ndim != len(in_shape) + 1 or tuple(x.shape[1:]) != in_shape:
            raise ValueError(
                f"layer {self.layers[start].name!r} takes batches of shape "
                f"(n, {', '.join(map(str, in_shape))}), got {x.shape}"
            )
        x = x.astype(DTYPE, copy=False)
        for layer in self.layers[start:stop]:
            x = layer(x)
        return x

    def layer_profiles(self) -> list[dict[str, Any]]:
        """Per layer: weights (MB), flops, output bytes, activation MB; per sample."""
        return [
            {
                "name": layer.name,
                "params_mb": layer.param_count * _BYTES / 1e6,
                "flops": layer.flops(),
                "output_bytes": float(math.prod(layer.out_shape) * _BYTES),
                "activation_mb": layer.activation_bytes() / 1e6,
            }
            for layer in self.layers
        ]


def load_model(spec_path: str | Path, weights_path: str | Path | None = None) -> Model:
    """Load a spec and its weights (``weights`` in the spec, else ``spec.npz``)."""
    spec_path = Path(spec_path)
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelSpecError(f"cannot read model spec {spec_path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise ModelSpecError(f"model spec {spec_path} is not a JSON object")
    if spec.get("format") != SPEC_FORMAT:
        raise ModelSpecError(
            f"model spec {spec_path} format is {spec.get('format')!r}; expected "
            f"{SPEC_FORMAT!r}"
        )
    if weights_path is None:
        ref = spec.get("weights")
        weights_path = (
            spec_path.parent / ref
            if isinstance(ref, str)
            else spec_path.with_suffix(".npz")
        )
    try:
        with np.load(weights_path, allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise ModelSpecError(f"cannot read weights {weights_path}: {exc}") from exc
    return Model(spec, weights)


def save_model(
    spec_path: str | Path, spec: Mapping[str, Any], weights: Mapping[str, np.ndarray]
) -> Path:
    """Write ``spec`` as JSON and ``weights`` beside it as ``.npz``; return its path."""
    spec_path = Path(spec_path)
    weights_path = spec_path.with_suffix(".npz")
    spec = dict(spec, format=SPEC_FORMAT, weights=weights_path.name)
    Model(spec, weights)  # refuse to write an inconsistent model
    np.savez(
        weights_path, **{k: np.asarray(v, dtype=DTYPE) for k, v in weights.items()}
    )
    spec_path.write_text(json.dumps(spec, indent=1))
    return spec_path


def example_mlp(seed: int = 0, sizes: Sequence[int] = (64, 128, 128, 64, 10)):
    """A small MLP spec and weights (dense, gelu, layernorm, residual, softmax)."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    layers: list[dict[str, Any]] = []

    def dense(name: str, n_in: int, n_out: int) -> dict[str, Any]:
        weights[f"{name}.w"] = rng.normal(0, 1 / math.sqrt(n_in), (n_in, n_out))
        weights[f"{name}.b"] = rng.normal(0, 0.1, n_out)
        return {
            "name": name,
            "op": "dense",
            "weights": {"w": f"{name}.w", "b": f"{name}.b"},
        }

    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(dense(f"fc{i}", n_in, n_out))
        if i + 2 < len(sizes):
            layers.append({"name": f"act{i}", "op": "gelu" if i % 2 else "relu"})
        if i == 0:
            weights["ln0.g"] = rng.normal(1, 0.1, n_out)
            weights["ln0.b"] = rng.normal(0, 0.1, n_out)
            layers.append(
                {"name": "ln0", "op": "layernorm",
                 "weights": {"gamma": "ln0.g", "beta": "ln0.b"}}
            )  # fmt: skip
            body = [dense("res0.fc", n_out, n_out), {"name": "res0.act", "op": "relu"}]
            layers.append({"name": "res0", "op": "residual", "body": body})
    layers.append({"name": "prob", "op": "softmax"})
    spec = {
        "format": SPEC_FORMAT,
        "name": "mlp",
        "input_shape": [sizes[0]],
        "layers": layers,
    }
    return spec, weights


def example_cnn(seed: int = 0, image: int = 16, channels: Sequence[int] = (3, 8, 16)):
    """A small CNN spec and weights (conv2d, relu, flatten, dense, softmax)."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    layers: list[dict[str, Any]] = []
    size = image
    for i, (c_in, c_out) in enumerate(zip(channels, channels[1:], strict=False)):
        weights[f"conv{i}.w"] = rng.normal(
            0, 1 / math.sqrt(9 * c_in), (c_out, c_in, 3, 3)
        )
        weights[f"conv{i}.b"] = rng.normal(0, 0.1, c_out)
        layers.append(
            {"name": f"conv{i}", "op": "conv2d", "stride": 2 if i else 1, "padding": 1,
             "weights": {"w": f"conv{i}.w", "b": f"conv{i}.b"}}
        )  # fmt: skip
        layers.append({"name": f"relu{i}", "op": "relu"})
        size = size if i == 0 else (size + 2 - 3) // 2 + 1
    layers.append({"name": "flat", "op": "flatten"})
    n_flat = channels[-1] * size * size
    weights["fc.w"] = rng.normal(0, 1 / math.sqrt(n_flat), (n_flat, 10))
    weights["fc.b"] = rng.normal(0, 0.1, 10)
    layers.append({"name": "fc", "op": "dense", "weights": {"w": "fc.w", "b": "fc.b"}})
    layers.append({"name": "prob", "op": "softmax"})
    spec = {
        "format": SPEC_FORMAT,
        "name": "cnn",
        "input_shape": [channels[0], image, image],
        "layers": layers,
    }
    return spec, weights
