"""A simulated clock that several processes share without talking.

Every process is given the same three numbers: the simulated time at the
start (``sim_epoch``), the wall-clock instant that corresponds to it
(``wall_start``, Unix seconds) and the speed-up.  Each then computes the same
simulated "now" from its own wall clock, so a day of orbits can pass in a few
minutes across a daemon and many agents.  ``SimClock.realtime()`` is the
identity clock for flight.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, slots=True)
class SimClock:
    sim_epoch: datetime
    wall_start: float
    speedup: float = 1.0

    def __post_init__(self) -> None:
        if self.sim_epoch.tzinfo is None:
            raise ValueError(
                f"sim_epoch={self.sim_epoch.isoformat()} has no time zone; "
                "pass a timezone-aware UTC datetime"
            )
        if not self.speedup > 0:
            raise ValueError(f"speedup={self.speedup} must be positive")

    @classmethod
    def realtime(cls) -> "SimClock":
        now = time.time()
        return cls(datetime.fromtimestamp(now, UTC), now, 1.0)

    def now(self) -> datetime:
        """The simulated time now, a timezone-aware UTC datetime."""
        return self.sim_epoch + timedelta(seconds=self.elapsed_s())

    def elapsed_s(self) -> float:
        """Simulated seconds since ``sim_epoch``."""
        return (time.time() - self.wall_start) * self.speedup

    def wall_seconds(self, sim_seconds: float) -> float:
        """How many wall-clock seconds a simulated span takes."""
        return sim_seconds / self.speedup

    def to_dict(self) -> dict:
        return {
            "sim_epoch": self.sim_epoch.isoformat(),
            "wall_start": self.wall_start,
            "speedup": self.speedup,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SimClock":
        epoch = datetime.fromisoformat(d["sim_epoch"])
        if epoch.tzinfo is None:
            epoch = epoch.replace(tzinfo=UTC)
        return cls(epoch, float(d["wall_start"]), float(d.get("speedup", 1.0)))
