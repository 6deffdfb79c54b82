"""The trainer interface: how the agent loop asks for local training.

An agent is handed the global weights, trains on its own data, and returns
the change it made.  Anything with this shape can be plugged in; a NumPy MLP
ships with the project (``agent._mlp``) so that no flight computer needs torch.
"""

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class TrainResult:
    """What one local training run produced.

    ``delta`` maps tensor name to (new weights - received weights), float32.
    ``num_samples`` is how many local samples the run used (FedAvg's weight).
    ``metrics`` holds plain floats, e.g. ``{"loss": 0.31}``.
    """

    delta: dict[str, np.ndarray]
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer(Protocol):
    def initial_weights(self) -> dict[str, np.ndarray]:
        """Weights to start from when no global model has arrived yet."""
        ...

    def train(self, weights: dict[str, np.ndarray], round_index: int) -> TrainResult:
        """Train locally from ``weights`` and return the change."""
        ...
