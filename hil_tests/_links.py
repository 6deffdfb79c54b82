"""Bring links up and down on predicted contact windows, on the shared clock.

The scheduler turns each agent's contact windows (simulated UTC times) into
wall-clock instants through the ``SimClock`` every process shares, and flips
the veth links at those instants from one thread.  It records every
transition with its wall time and how late it was, so a test can check that
the links really followed the prediction.
"""

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from agent._clock import SimClock

logger = logging.getLogger(__name__)

Window = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class Transition:
    agent: int
    up: bool
    due_wall_s: float
    done_wall_s: float

    @property
    def late_s(self) -> float:
        return self.done_wall_s - self.due_wall_s


def merge_windows(windows: Sequence[Window]) -> list[Window]:
    """Sort windows and merge the ones that overlap or touch."""
    merged: list[Window] = []
    for start, end in sorted(windows):
        if end <= start:
            raise ValueError(
                f"contact window {start.isoformat()} .. {end.isoformat()} "
                "ends before it starts"
            )
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def schedule(
    clock: SimClock, windows: Mapping[int, Sequence[Window]]
) -> list[tuple[float, int, bool]]:
    """Wall-clock link events (time_s, agent, up) for the windows, in order.

    Every link starts down at ``clock.sim_epoch`` unless a window covers it.
    """
    events: list[tuple[float, int, bool]] = []
    for agent, ws in windows.items():
        for start, end in merge_windows(ws):
            for t, up in ((start, True), (end, False)):
                offset_s = (t - clock.sim_epoch).total_seconds()
                wall = clock.wall_start + max(0.0, clock.wall_seconds(offset_s))
                events.append((wall, agent, up))
    events.sort(key=lambda e: (e[0], e[2]))  # down before up at the same time
    return events


def is_in_contact(windows: Sequence[Window], t: datetime) -> bool:
    return any(start <= t < end for start, end in windows)


class LinkScheduler:
    """A thread that applies link events through ``set_link(agent, up)``."""

    def __init__(
        self,
        clock: SimClock,
        windows: Mapping[int, Sequence[Window]],
        set_link: Callable[[int, bool], None],
    ) -> None:
        self.clock = clock
        self.windows = {a: merge_windows(ws) for a, ws in windows.items()}
        self._set_link = set_link
        self._events = schedule(clock, self.windows)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="links", daemon=True)
        self.transitions: list[Transition] = []
        self.errors: list[str] = []

    def start(self) -> "LinkScheduler":
        # Set every link to its state now; events before now are then moot.
        self._started_wall_s = time.time()
        now = self.clock.now()
        for agent, ws in self.windows.items():
            self._set_link(agent, is_in_contact(ws, now))
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> "LinkScheduler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        for due, agent, up in self._events:
            if due <= self._started_wall_s:
                continue
            while not self._stop.is_set() and time.time() < due:
                self._stop.wait(min(0.05, max(0.0, due - time.time())))
            if self._stop.is_set():
                return
            try:
                self._set_link(agent, up)
            except Exception as exc:  # keep following the schedule
                self.errors.append(f"agent {agent} up={up}: {exc}")
                logger.error("link change failed: agent %d up=%s: %s", agent, up, exc)
                continue
            self.transitions.append(Transition(agent, up, due, time.time()))

    def outages(self, agent: int) -> int:
        """How many times agent's link went down after having been up."""
        return sum(1 for t in self.transitions if t.agent == agent and not t.up)
