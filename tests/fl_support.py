"""A deterministic least-squares trainer for the agent and daemon tests.

Each agent holds synthetic data ``y = X @ w_true + noise`` drawn from a seed
derived from its id; ``train`` runs ``steps`` full-batch gradient steps from
the weights it is handed and returns the change.  Everything is float32 and
deterministic, so a test can recompute in-process exactly what an agent
process sent.
"""

import zlib
from typing import Any

import numpy as np

from agent._trainer import TrainResult

DIM = 8


class LeastSquaresTrainer:
    def __init__(
        self, node_id: str, *, samples: int = 64, steps: int = 3, lr: float = 0.05
    ) -> None:
        rng = np.random.default_rng(zlib.crc32(node_id.encode()))
        self.X = rng.normal(size=(samples, DIM)).astype(np.float32)
        w_true = np.arange(1, DIM + 1, dtype=np.float32) / DIM
        self.y = (self.X @ w_true + 0.01 * rng.normal(size=samples)).astype(np.float32)
        self.steps = steps
        self.lr = np.float32(lr)

    def initial_weights(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(DIM, np.float32), "b": np.zeros(1, np.float32)}

    def train(self, weights: dict[str, np.ndarray], round_index: int) -> TrainResult:
        w = np.array(weights["w"], np.float32)
        b = np.array(weights["b"], np.float32)
        n = np.float32(len(self.y))
        for _ in range(self.steps):
            err = self.X @ w + b - self.y
            w = w - self.lr * (self.X.T @ err) / n
            b = b - self.lr * err.sum(keepdims=True) / n
        loss = float(np.mean((self.X @ w + b - self.y) ** 2))
        return TrainResult(
            {"w": w - weights["w"], "b": b - weights["b"]},
            int(n),
            {"loss": loss},
        )


def make(section: dict[str, Any]) -> LeastSquaresTrainer:
    """``[trainer] kind = "factory", factory = "tests.fl_support:make"``."""
    return LeastSquaresTrainer(
        section["node_id"],
        samples=int(section.get("samples", 64)),
        steps=int(section.get("steps", 3)),
    )


# ------------------------------------------------------------ test plumbing

T_WAIT_S = 10.0  # generous: the CI machine is shared and noisy


def ground_config(tmp_path, **sections) -> dict:
    """A ground.toml as a dict: loopback, random port, no CURVE, short deadline."""
    raw = {
        "ground": {"bind": "tcp://127.0.0.1:0", "state_dir": str(tmp_path / "ground")},
        "security": {"curve": False},
        "rounds": {"min_participants": 1, "deadline_s": 30.0},
        "model": {"zeros": {"w": [DIM], "b": [1]}},
        "metrics": {"enabled": False},
        "transport": {"linger_ms": 0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def agent_config(tmp_path, node_id: str, endpoint: str, **sections) -> dict:
    raw = {
        "agent": {"id": node_id, "state_dir": str(tmp_path / node_id)},
        "ground": {"endpoint": endpoint, "hello_interval_s": 0.2},
        "security": {"curve": False},
        "retry": {"initial_s": 0.2, "max_s": 1.0},
        "transport": {"linger_ms": 0},
        "trainer": {
            "kind": "factory",
            "factory": "tests.fl_support:make",
            "node_id": node_id,
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def write_toml(path, raw: dict) -> None:
    """Write a two-level dict as TOML (enough for these configs)."""

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    lines = []
    for section, table in raw.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {value(v)}" for k, v in table.items())
        lines.append("")
    path.write_text("\n".join(lines))
