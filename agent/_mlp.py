"""A small multilayer perceptron trained with minibatch SGD, in NumPy only.

This is the trainer the agent ships with: it reads one satellite's data shard
(an ``.npz`` file with a 2-D float array ``X`` and a 1-D integer array ``y``),
starts from the global weights it is handed, runs ``local_steps`` steps of
minibatch SGD on softmax cross-entropy, and returns the change.  It needs no
torch and no scikit-learn, so it runs on any flight computer that has NumPy.

Weights are a flat dict of float32 arrays named ``W0, b0, W1, b1, ...``: layer
``i`` maps ``x @ W_i + b_i`` and all but the last are followed by a ReLU.  The
same names and shapes are used by every satellite and by the ground, so a
delta from any of them can be added to the global model.

The shard may carry ``num_classes`` (a scalar) so that a satellite whose
non-IID shard lacks some labels still builds an output layer of the right
width; without it the width is ``max(y) + 1``, or ``num_classes`` given to the
constructor.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent._trainer import TrainResult

# Keys accepted by MLPTrainer.from_config, and what each becomes.
_CONFIG_KEYS = (
    "kind",
    "data",
    "data_path",
    "hidden",
    "local_steps",
    "lr",
    "batch_size",
    "seed",
    "num_classes",
    "weight_decay",
)


class ShardError(ValueError):
    """A data shard cannot be used for training; the message says why."""


def load_shard(path: str | Path) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Read ``X``, ``y`` and the optional ``num_classes`` from an ``.npz`` file.

    Every problem with the file is collected and raised once as a
    ``ShardError``; ``X`` comes back as C-contiguous float32, ``y`` as int64.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            arrays = {k: npz[k] for k in ("X", "y", "num_classes") if k in names}
    except FileNotFoundError:
        raise ShardError(f"data file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ShardError(
            f"data file {path} is not a readable .npz archive ({exc}); "
            "write it with numpy.savez(path, X=..., y=...)"
        ) from None

    problems = []
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        problems.append(
            f"missing array(s) {', '.join(missing)} (found: "
            f"{', '.join(sorted(names)) or 'none'}); expected X (samples x "
            "features) and y (samples,)"
        )
    X = arrays.get("X")
    y = arrays.get("y")
    if X is not None:
        if X.ndim != 2:
            problems.append(f"X has shape {X.shape}; expected (samples, features)")
        elif not np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_:
            problems.append(f"X has dtype {X.dtype}; expected a numeric dtype")
        elif not np.all(np.isfinite(X)):
            problems.append(
                f"X holds {int(np.size(X) - np.count_nonzero(np.isfinite(X)))} "
                "NaN or infinite values"
            )
    if y is not None:
        if y.ndim != 1:
            problems.append(f"y has shape {y.shape}; expected (samples,)")
        elif not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(
                np.isfinite(y) & (y == np.round(y))
            ):
                y = y.astype(np.int64)
            else:
                problems.append(f"y has dtype {y.dtype}; expected integer class labels")
        if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and y.size:
            if int(y.min()) < 0:
                problems.append(f"y has a negative label {int(y.min())}")
    if X is not None and y is not None and X.ndim == 2 and y.ndim == 1:
        if X.shape[0] != y.shape[0]:
            problems.append(
                f"X has {X.shape[0]} rows but y has {y.shape[0]} labels; "
                "they must match"
            )
        elif X.shape[0] == 0:
            problems.append("X and y hold no samples")
    num_classes = None
    if "num_classes" in arrays:
        nc = arrays["num_classes"]
        if nc.shape != () or not np.issubdtype(nc.dtype, np.integer) or nc < 1:
            problems.append(
                f"num_classes is {nc!r}; expected a positive integer scalar"
            )
        else:
            num_classes = int(nc)
            if y is not None and y.ndim == 1 and y.size and y.max() >= num_classes:
                problems.append(
                    f"y has label {int(y.max())} but num_classes={num_classes}"
                )
    if problems:
        raise ShardError(f"data file {path}: " + "; ".join(problems))
    return (
        np.ascontiguousarray(X, dtype=np.float32),
        np.asarray(y, dtype=np.int64),
        num_classes,
    )


def layer_shapes(
    input_dim: int, hidden: Sequence[int], num_classes: int
) -> list[tuple[int, int]]:
    """The (fan_in, fan_out) of each dense layer."""
    dims = [int(input_dim), *(int(h) for h in hidden), int(num_classes)]
    return list(zip(dims[:-1], dims[1:], strict=True))


def init_weights(
    input_dim: int, hidden: Sequence[int], num_classes: int, seed: int
) -> dict[str, np.ndarray]:
    """He-normal weights and zero biases, reproducible from ``seed``.

    He initialisation (He et al. 2015) keeps ReLU activations at unit
    variance, so the first rounds learn without tuning the step size.
    """
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for i, (fan_in, fan_out) in enumerate(layer_shapes(input_dim, hidden, num_classes)):
        std = np.sqrt(2.0 / fan_in)
        weights[f"W{i}"] = (rng.standard_normal((fan_in, fan_out)) * std).astype(
            np.float32
        )
        weights[f"b{i}"] = np.zeros(fan_out, dtype=np.float32)
    return weights


def _num_layers(weights: Mapping[str, np.ndarray]) -> int:
    n = 0
    while f"W{n}" in weights:
        n += 1
    if n == 0:
        raise KeyError(
            f"weights have no layer W0; got names {sorted(weights)}; expected "
            "W0, b0, W1, b1, ..."
        )
    return n


def forward(weights: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Return the logits of ``X`` (samples x classes)."""
    n = _num_layers(weights)
    h = np.asarray(X, dtype=np.float32)
    for i in range(n):
        h = h @ weights[f"W{i}"] + weights[f"b{i}"]
        if i < n - 1:
            np.maximum(h, 0.0, out=h)
    return h


def evaluate(weights: Mapping[str, np.ndarray], X: np.ndarray, y: np.ndarray) -> float:
    """Classification accuracy of ``weights`` on ``X``, ``y``, in [0, 1]."""
    y = np.asarray(y)
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty set: y has no labels")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} labels")
    predicted = np.argmax(forward(weights, X), axis=1)
    return float(np.mean(predicted == y))


def _softmax_xent_grad(
    weights: Mapping[str, np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    weight_decay: float,
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy over the batch and its gradient."""
    n = _num_layers(weights)
    activations = [X]
    h = X
    for i in range(n):
        h = h @ weights[f"W{i}"] + weights[f"b{i}"]
        if i < n - 1:
            h = np.maximum(h, 0.0)
        activations.append(h)
    logits = activations[-1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    probs = exp / sum_exp
    rows = np.arange(len(y))
    loss = float(np.mean(np.log(sum_exp[:, 0]) - shifted[rows, y]))

    grads: dict[str, np.ndarray] = {}
    g = probs
    g[rows, y] -= 1.0
    g /= len(y)
    for i in range(n - 1, -1, -1):
        a_in = activations[i]
        grads[f"W{i}"] = a_in.T @ g
        grads[f"b{i}"] = g.sum(axis=0)
        if weight_decay:
            grads[f"W{i}"] += weight_decay * weights[f"W{i}"]
        if i > 0:
            g = (g @ weights[f"W{i}"].T) * (activations[i] > 0)
    return loss, grads


class MLPTrainer:
    """Train an MLP on one satellite's shard with ``local_steps`` SGD steps.

    ``data_path`` is the ``.npz`` shard (``X``, ``y``, optional
    ``num_classes``); ``hidden`` the hidden layer widths; ``lr`` the SGD step
    size; ``batch_size`` the minibatch size (capped at the shard size);
    ``seed`` fixes the initial weights (the same on every satellite, so that
    they all start from one model) and, mixed with the round index, the batch
    order.
    """

    def __init__(
        self,
        data_path: str | Path,
        hidden: Sequence[int] = (64,),
        local_steps: int = 20,
        lr: float = 0.05,
        batch_size: int = 32,
        seed: int = 0,
        num_classes: int | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        problems = []
        hidden = tuple(hidden)
        if not all(isinstance(h, int | np.integer) and h > 0 for h in hidden):
            problems.append(f"hidden={hidden!r} must be positive ints")
        if not (isinstance(local_steps, int | np.integer) and local_steps >= 1):
            problems.append(f"local_steps={local_steps!r} must be an int >= 1")
        if not (isinstance(lr, int | float) and np.isfinite(lr) and lr > 0):
            problems.append(f"lr={lr!r} must be a positive number")
        if not (isinstance(batch_size, int | np.integer) and batch_size >= 1):
            problems.append(f"batch_size={batch_size!r} must be an int >= 1")
        if not (isinstance(weight_decay, int | float) and weight_decay >= 0):
            problems.append(f"weight_decay={weight_decay!r} must be >= 0")
        if problems:
            raise ValueError("invalid MLPTrainer settings: " + "; ".join(problems))

        self.data_path = Path(data_path)
        self.X, self.y, shard_classes = load_shard(self.data_path)
        if num_classes is None:
            num_classes = shard_classes or int(self.y.max()) + 1
        elif int(self.y.max()) >= num_classes:
            raise ShardError(
                f"data file {self.data_path}: y has label {int(self.y.max())} but "
                f"num_classes={num_classes}"
            )
        self.num_classes = int(num_classes)
        self.hidden = hidden
        self.local_steps = int(local_steps)
        self.lr = float(lr)
        self.batch_size = int(min(batch_size, len(self.y)))
        self.seed = int(seed)
        self.weight_decay = float(weight_decay)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "MLPTrainer":
        """Build from an agent config's ``[trainer]`` table.

        Keys: ``data`` (or ``data_path``), ``hidden`` (list of ints),
        ``local_steps``, ``lr``, ``batch_size``, ``seed``, ``num_classes``,
        ``weight_decay``; ``kind``, when present, must be ``"mlp"``.
        """
        unknown = sorted(set(section) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(
                f"unknown [trainer] key(s) {', '.join(unknown)}; expected some of "
                f"{', '.join(_CONFIG_KEYS)}"
            )
        kind = section.get("kind", "mlp")
        if kind != "mlp":
            raise ValueError(f"[trainer] kind={kind!r} is not 'mlp'")
        data = section.get("data", section.get("data_path"))
        if data is None:
            raise ValueError(
                '[trainer] needs data = "PATH.npz" (the satellite\'s data shard)'
            )
        kwargs = {
            k: section[k]
            for k in (
                "local_steps",
                "lr",
                "batch_size",
                "seed",
                "num_classes",
                "weight_decay",
            )
            if k in section
        }
        if "hidden" in section:
            hidden = section["hidden"]
            kwargs["hidden"] = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        return cls(data, **kwargs)

    @property
    def input_dim(self) -> int:
        return int(self.X.shape[1])

    @property
    def num_samples(self) -> int:
        return int(len(self.y))

    def initial_weights(self) -> dict[str, np.ndarray]:
        return init_weights(self.input_dim, self.hidden, self.num_classes, self.seed)

    def check_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Raise ValueError naming every tensor whose name or shape is wrong."""
        expected = {
            name: a.shape
            for name, a in init_weights(
                self.input_dim, self.hidden, self.num_classes, 0
            ).items()
        }
        problems = []
        for name, shape in expected.items():
            if name not in weights:
                problems.append(f"{name} is missing (expected shape {shape})")
            elif tuple(np.shape(weights[name])) != shape:
                problems.append(
                    f"{name} has shape {tuple(np.shape(weights[name]))}, "
                    f"expected {shape}"
                )
        extra = sorted(set(weights) - set(expected))
        if extra:
            problems.append(f"unexpected tensors {', '.join(extra)}")
        if problems:
            raise ValueError("weights do not fit this MLP: " + "; ".join(problems))

    def train(self, weights: Mapping[str, np.ndarray], round_index: int) -> TrainResult:
        """Run ``local_steps`` SGD steps from ``weights``; return new - old."""
        self.check_weights(weights)
        start = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        current = {k: v.copy() for k, v in start.items()}

        # The batch order depends on the seed and the round, so a retried
        # round reproduces the same update.
        rng = np.random.default_rng([self.seed, int(round_index) & 0xFFFFFFFF])
        n = len(self.y)
        order = rng.permutation(n)
        cursor = 0
        losses = []
        for _ in range(self.local_steps):
            if cursor + self.batch_size > n:
                order = rng.permutation(n)
                cursor = 0
            idx = order[cursor : cursor + self.batch_size]
            cursor += self.batch_size
            loss, grads = _softmax_xent_grad(
                current, self.X[idx], self.y[idx], self.weight_decay
            )
            losses.append(loss)
            for k, g in grads.items():
                current[k] -= np.float32(self.lr) * g.astype(np.float32, copy=False)

        delta = {k: (current[k] - start[k]).astype(np.float32) for k in start}
        metrics = {
            "loss": float(np.mean(losses)),
            "train_accuracy": evaluate(current, self.X, self.y),
        }
        # FedAvg weighs a client by its data set size (McMahan et al. 2017),
        # not by the number of draws it happened to make this round.
        return TrainResult(delta=delta, num_samples=n, metrics=metrics)
