"""Network namespaces for the link tests: one ground, one per agent.

Each agent namespace is joined to the ground namespace by its own veth pair;
the agent end carries the uplink shaper and the ground end the downlink
shaper, both ``tc tbf`` (token bucket: rate, burst, queue latency).  A link
outage is the agent end set down, which takes the carrier off both ends, so
the ground sees the satellite go over the horizon too.

Addresses are 10.77.<i>.1 (ground side) and 10.77.<i>.2 (agent i) inside
namespaces this module creates and removes; nothing leaves the machine.

``netem`` is not available on these machines, so the veths add no
propagation delay: they emulate rate, queueing and outages.  Delay is added
in user space by ``hil_tests._delay``, a TCP proxy in the ground namespace
that holds every chunk for a one-way delay (``test_delay.py``).
"""

import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

SUBNET_PREFIX = "10.77"


class NetnsError(RuntimeError):
    """An ``ip`` or ``tc`` command failed; the message carries its stderr."""


def run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found; install iproute2"
    probe = f"ofl-probe-{os.getpid()}"
    proc = run(["ip", "netns", "add", probe], check=False)
    if proc.returncode != 0:
        return f"`ip netns add` fails here: {proc.stderr.strip()}"
    run(["ip", "netns", "del", probe], check=False)
    return None


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """Shaping of one satellite link; rates in kbit/s, queue limit in ms."""

    uplink_kbit: int = 2000
    downlink_kbit: int = 8000
    burst_kbyte: int = 16
    queue_latency_ms: int = 400


@dataclass
class NetnsLab:
    """A ground namespace and ``n_agents`` agent namespaces joined by veths.

    Use as a context manager; everything is removed on exit, also after an
    error half-way through setup.
    """

    n_agents: int
    link: LinkSpec = field(default_factory=LinkSpec)
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    _up: list[bool] = field(init=False, default_factory=list)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    transitions: list[tuple[float, int, bool]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if not 1 <= self.n_agents <= 200:
            raise ValueError(f"n_agents={self.n_agents}; expected 1 to 200")

    @property
    def ground_ns(self) -> str:
        return f"ofl{self.tag}g"

    def agent_ns(self, i: int) -> str:
        return f"ofl{self.tag}a{i}"

    def ground_if(self, i: int) -> str:
        return f"o{self.tag}g{i}"[:15]

    def agent_if(self, i: int) -> str:
        return f"o{self.tag}a{i}"[:15]

    def ground_addr(self, i: int) -> str:
        """The address agent i uses to reach the ground."""
        return f"{SUBNET_PREFIX}.{i}.1"

    def agent_addr(self, i: int) -> str:
        return f"{SUBNET_PREFIX}.{i}.2"

    def netns_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside namespace ``ns``."""
        return ["ip", "netns", "exec", ns, *argv]

    def __enter__(self) -> "NetnsLab":
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def setup(self) -> None:
        g = self.ground_ns
        run(["ip", "netns", "add", g])
        run(["ip", "-n", g, "link", "set", "lo", "up"])
        for i in range(self.n_agents):
            a, gi, ai = self.agent_ns(i), self.ground_if(i), self.agent_if(i)
            run(["ip", "netns", "add", a])
            run(["ip", "-n", a, "link", "set", "lo", "up"])
            run(
                [
                    "ip",
                    "link",
                    "add",
                    gi,
                    "netns",
                    g,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    ai,
                    "netns",
                    a,
                ]
            )
            run(["ip", "-n", g, "addr", "add", f"{self.ground_addr(i)}/24", "dev", gi])
            run(["ip", "-n", a, "addr", "add", f"{self.agent_addr(i)}/24", "dev", ai])
            run(["ip", "-n", g, "link", "set", gi, "up"])
            run(["ip", "-n", a, "link", "set", ai, "up"])
            self._shape(a, ai, self.link.uplink_kbit)
            self._shape(g, gi, self.link.downlink_kbit)
            self._up.append(True)

    def _shape(self, ns: str, dev: str, rate_kbit: int) -> None:
        run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "tc",
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                f"{rate_kbit}kbit",
                "burst",
                f"{self.link.burst_kbyte}kb",
                "latency",
                f"{self.link.queue_latency_ms}ms",
            ]
        )

    def set_rates(self, i: int, uplink_kbit: int, downlink_kbit: int) -> None:
        """Reshape agent i's link (e.g. a ground-based peer on a fast line)."""
        self._shape(self.agent_ns(i), self.agent_if(i), uplink_kbit)
        self._shape(self.ground_ns, self.ground_if(i), downlink_kbit)

    def teardown(self) -> None:
        # Deleting a namespace deletes its veth ends and their qdiscs.  Any
        # process still inside keeps it alive only as an unnamed namespace.
        for i in range(self.n_agents):
            run(["ip", "netns", "del", self.agent_ns(i)], check=False)
        run(["ip", "netns", "del", self.ground_ns], check=False)

    def set_link(self, i: int, up: bool, at_wall_s: float | None = None) -> None:
        """Bring agent i's link up or down (both ends lose the carrier)."""
        import time

        state = "up" if up else "down"
        run(["ip", "-n", self.agent_ns(i), "link", "set", self.agent_if(i), state])
        with self._lock:
            self._up[i] = up
            self.transitions.append((at_wall_s or time.time(), i, up))

    def is_up(self, i: int) -> bool:
        with self._lock:
            return self._up[i]

    def qdisc_stats(self, i: int) -> str:
        """``tc -s qdisc`` of agent i's uplink, for diagnostics."""
        proc = run(
            [
                "ip",
                "netns",
                "exec",
                self.agent_ns(i),
                "tc",
                "-s",
                "qdisc",
                "show",
                "dev",
                self.agent_if(i),
            ]
        )
        return proc.stdout
