"""Which coordinates of the global model changed between the versions the ground sent.

The daemon builds one full MODEL frame per (round, version).  Before it drops
the previous frame it diffs that frame's weights (read in place from the
frame's bytes) against the new model and records the changed flat indices.
An agent that says in its HELLO that it holds version ``h`` then gets a patch
made of the union of the changes since ``h`` and the current values there
(:mod:`agent._model_patch`), when that is clearly smaller than the weights.

Memory is bounded: the log keeps at most ``max_fraction`` of the model's
element count in stored indices (4 bytes each), dropping the oldest steps
first; a step that changed more than that is not recorded and ends every
chain that crosses it, so agents behind it get the full weights.
"""

from collections import deque
from collections.abc import Mapping

import numpy as np

from agent._model_patch import changed_indices


class PatchLog:
    """Changed indices per step between successive model versions sent."""

    def __init__(self, max_fraction: float = 0.25) -> None:
        if not 0.0 < max_fraction <= 1.0:
            raise ValueError(f"max_fraction={max_fraction!r} must be in (0, 1]")
        self.max_fraction = max_fraction
        # (from_version, to_version, {name: indices}), oldest first
        self._steps: deque[tuple[int, int, dict[str, np.ndarray]]] = deque()
        self._stored = 0
        self._head: int | None = None  # version the newest step ends at

    def record(
        self,
        old: Mapping[str, np.ndarray] | None,
        old_version: int,
        new: Mapping[str, np.ndarray],
        new_version: int,
    ) -> None:
        """Log the step from the model sent as ``old_version`` to ``new``."""
        total = sum(a.size for a in new.values())
        budget = int(self.max_fraction * total)
        same_layout = old is not None and set(old) == set(new)
        if same_layout:
            for name, a in new.items():
                b = old[name]
                if b.shape != a.shape or b.dtype != a.dtype:
                    same_layout = False
                    break
        if not same_layout or self._head not in (None, old_version):
            self.clear()
        step: dict[str, np.ndarray] | None = {}
        if same_layout:
            count = 0
            for name, a in new.items():
                idx = changed_indices(old[name], a)
                count += idx.size
                if count > budget:
                    step = None
                    break
                step[name] = idx
        else:
            step = None
        if step is None:
            self.clear()
        elif old_version != new_version or any(i.size for i in step.values()):
            self._steps.append((old_version, new_version, step))
            self._stored += sum(i.size for i in step.values())
            while self._stored > budget and self._steps:
                _, _, dropped = self._steps.popleft()
                self._stored -= sum(i.size for i in dropped.values())
        self._head = new_version

    def clear(self) -> None:
        self._steps.clear()
        self._stored = 0
        self._head = None

    def changed_since(self, version: int) -> dict[str, np.ndarray] | None:
        """Union of the indices changed since ``version``, or None if not known.

        ``{}`` means nothing changed (the agent holds the newest model).
        """
        if self._head is None:
            return None
        if version == self._head:
            return {}
        parts: dict[str, list[np.ndarray]] = {}
        for frm, _, step in reversed(self._steps):
            for name, idx in step.items():
                parts.setdefault(name, []).append(idx)
            if frm == version:
                return {
                    name: np.unique(np.concatenate(p)).astype(np.uint32, copy=False)
                    for name, p in parts.items()
                }
        return None
