"""A trainer whose every update says who made it: the aggregate is checkable.

Agent ``agent_index`` training round ``r`` returns a delta that is zero
except for ``value`` at slot ``agent_index * rounds_per_agent + r`` of the
tensor ``w``.  Under FEDAVG with one sample per update, the final global
model therefore holds, at each slot, 1/n for an update aggregated once in a
round of n updates, 0 for one never aggregated, and something else for one
aggregated twice: the model itself proves exactly-once aggregation, without
trusting the daemon's own bookkeeping.

``[trainer] kind = "factory"``, ``factory = "hil_tests._trainer:make"``,
``agent_index``, ``rounds_per_agent``, ``n_agents``; optional ``extra`` (a
number of trailing float32 padding elements, to make updates big enough to
take time on a shaped link) and ``train_s`` (seconds of simulated work).
"""

import time
from typing import Any

import numpy as np

from agent._trainer import TrainResult

TENSOR = "w"


class SlotTrainer:
    def __init__(
        self,
        agent_index: int,
        rounds_per_agent: int,
        n_agents: int,
        extra: int = 0,
        train_s: float = 0.0,
    ) -> None:
        if not 0 <= agent_index < n_agents:
            raise ValueError(f"agent_index={agent_index}; expected 0..{n_agents - 1}")
        self.agent_index = agent_index
        self.rounds_per_agent = rounds_per_agent
        self.size = n_agents * rounds_per_agent + extra
        self.train_s = train_s

    def slot(self, round_index: int) -> int:
        if not 0 <= round_index < self.rounds_per_agent:
            raise ValueError(
                f"round {round_index} has no slot; rounds_per_agent="
                f"{self.rounds_per_agent}"
            )
        return self.agent_index * self.rounds_per_agent + round_index

    def initial_weights(self) -> dict[str, np.ndarray]:
        return {TENSOR: np.zeros(self.size, np.float32)}

    def train(self, weights: dict[str, np.ndarray], round_index: int) -> TrainResult:
        if self.train_s:
            time.sleep(self.train_s)
        delta = np.zeros(self.size, np.float32)
        delta[self.slot(round_index)] = 1.0
        return TrainResult({TENSOR: delta}, num_samples=1, metrics={"slot": 1.0})


def make(section: dict[str, Any]) -> SlotTrainer:
    return SlotTrainer(
        int(section["agent_index"]),
        int(section["rounds_per_agent"]),
        int(section["n_agents"]),
        int(section.get("extra", 0)),
        float(section.get("train_s", 0.0)),
    )
