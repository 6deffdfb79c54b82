"""The agent's configuration file, ``agent.toml`` (read with ``tomllib``).

Every option is documented in README.md ("Agent and ground configuration").
Relative paths are resolved against the directory of the config file, so a
config and its keys can be moved together.  All problems in one file are
collected and reported together in one :class:`ConfigError`.
"""

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent._clock import SimClock
from agent._transport import Backoff, TransportOptions
from agent._wire import DEFAULT_MAX_ELEMENTS, ID_PATTERN, Limits

MB = 1024 * 1024


class ConfigError(ValueError):
    """A configuration file is invalid; the message lists every problem."""


class Table:
    """Typed access to one TOML table that records every problem it meets.

    Reading a key removes it, so :meth:`finish` can report the keys nobody
    asked for (usually typos).
    """

    def __init__(
        self, name: str, raw: Any, problems: list[str], base_dir: Path
    ) -> None:
        self.name = name
        self.problems = problems
        self.base_dir = base_dir
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.append(f"[{name}] must be a table, got {type(raw).__name__}")
            raw = {}
        self._raw = dict(raw)

    def _get(self, key: str, default: Any, types: tuple, expected: str) -> Any:
        if key not in self._raw:
            return default
        value = self._raw.pop(key)
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            self.problems.append(f"[{self.name}] {key} = {value!r} must be {expected}")
            return default
        return value

    def str(self, key: str, default: Any = None) -> Any:
        return self._get(key, default, (str,), "a string")

    def bool(self, key: str, default: bool) -> bool:
        return self._get(key, default, (bool,), "true or false")

    def int(self, key: str, default: Any, *, min: int | None = None) -> Any:
        value = self._get(key, default, (int,), "an integer")
        if value is not None and min is not None and value < min:
            self.problems.append(f"[{self.name}] {key} = {value} must be >= {min}")
            return default
        return value

    def float(self, key: str, default: Any, *, min: float | None = None) -> Any:
        value = self._get(key, default, (int, float), "a number")
        if value is not None and min is not None and not value >= min:
            self.problems.append(f"[{self.name}] {key} = {value} must be >= {min}")
            return default
        return None if value is None else float(value)

    def str_list(self, key: str, default: list[str]) -> list[str]:
        value = self._get(key, default, (list,), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            self.problems.append(f"[{self.name}] {key} = {value!r} must hold strings")
            return default
        return list(value)

    def path(self, key: str, default: Any = None) -> Path | None:
        value = self.str(key, None)
        if value is None:
            return None if default is None else self.base_dir / default
        return self.base_dir / Path(value).expanduser()

    def rest(self) -> dict[str, Any]:
        """Take every remaining key (for sections passed through as options)."""
        rest, self._raw = self._raw, {}
        return rest

    def finish(self) -> None:
        for key in sorted(self._raw):
            self.problems.append(f"[{self.name}] has unknown key {key!r}")


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def check_sections(
    raw: dict[str, Any], known: tuple[str, ...], problems: list[str]
) -> None:
    for key in sorted(set(raw) - set(known)):
        problems.append(
            f"unknown section [{key}]; expected some of "
            + ", ".join(f"[{k}]" for k in known)
        )


def parse_clock(t: Table) -> SimClock | None:
    """``[clock]``: ``sim_epoch`` (ISO 8601, UTC), ``wall_start``, ``speedup``."""
    epoch = t.str("sim_epoch", None)
    wall_start = t.float("wall_start", None)
    speedup = t.float("speedup", 1.0)
    t.finish()
    if epoch is None and wall_start is None:
        return None
    if epoch is None or wall_start is None:
        t.problems.append("[clock] needs both sim_epoch and wall_start")
        return None
    try:
        sim_epoch = datetime.fromisoformat(epoch)
    except ValueError:
        t.problems.append(
            f"[clock] sim_epoch = {epoch!r} is not ISO 8601, e.g. "
            "'2026-01-01T00:00:00+00:00'"
        )
        return None
    if sim_epoch.tzinfo is None:
        sim_epoch = sim_epoch.replace(tzinfo=UTC)
    try:
        return SimClock(sim_epoch, wall_start, speedup)
    except ValueError as exc:
        t.problems.append(f"[clock] {exc}")
        return None


def parse_transport(t: Table) -> tuple[TransportOptions, Limits]:
    """``[transport]``: socket options and the message size cap."""
    d = TransportOptions()
    kwargs = {
        name: t.int(name, getattr(d, name), min=0)
        for name in (
            "heartbeat_ivl_ms",
            "heartbeat_timeout_ms",
            "heartbeat_ttl_ms",
            "linger_ms",
            "reconnect_ivl_ms",
            "reconnect_ivl_max_ms",
            "send_hwm",
            "recv_hwm",
        )
    }
    max_mb = t.float("max_message_mb", d.max_message_bytes / MB, min=0.001)
    max_elements = t.int("max_elements", DEFAULT_MAX_ELEMENTS, min=1)
    kwargs["max_message_bytes"] = int(max_mb * MB)
    return TransportOptions(**kwargs), Limits(kwargs["max_message_bytes"], max_elements)


@dataclass
class AgentConfig:
    """A parsed ``agent.toml``; see README for every option."""

    id: str
    endpoint: str
    state_dir: Path
    max_rounds: int = 0
    curve: bool = True
    secret_key: Path | None = None
    server_key: Path | None = None
    transport: TransportOptions = field(default_factory=TransportOptions)
    limits: Limits = field(default_factory=Limits)
    retry_settings: dict[str, float] = field(default_factory=dict)
    hello_interval_s: float = 5.0
    reconnect_after_s: float = 60.0
    outbox_path: Path | None = None
    outbox_max_entries: int = 1000
    outbox_max_bytes: int = 256 * MB
    outbox_expiry_s: float = 7 * 86400.0
    compression: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    clock: SimClock | None = None
    orbit: dict[str, Any] | None = None
    link_poll_s: float = 1.0
    base_dir: Path = Path(".")

    def backoff(self) -> Backoff:
        return Backoff(seed=self.id, **self.retry_settings)


_AGENT_SECTIONS = (
    "agent",
    "ground",
    "security",
    "transport",
    "retry",
    "outbox",
    "compression",
    "trainer",
    "clock",
    "orbit",
)


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate ``agent.toml``; raise :class:`ConfigError` listing problems."""
    path = Path(path)
    return parse_agent_config(read_toml(path), path.resolve().parent, str(path))


def parse_agent_config(
    raw: dict[str, Any], base_dir: Path, source: str = "agent config"
) -> AgentConfig:
    problems: list[str] = []
    check_sections(raw, _AGENT_SECTIONS, problems)

    def table(name: str) -> Table:
        return Table(name, raw.get(name), problems, base_dir)

    t = table("agent")
    node_id = t.str("id", None)
    if node_id is None:
        problems.append('[agent] id is required, e.g. id = "sat-001"')
        node_id = "unnamed"
    elif not ID_PATTERN.fullmatch(node_id):
        problems.append(
            f"[agent] id = {node_id!r} must be 1 to 64 letters, digits, '_.:-'"
        )
    state_dir = t.path("state_dir", f"state-{node_id}")
    max_rounds = t.int("max_rounds", 0, min=0)
    link_poll_s = t.float("link_poll_s", 1.0, min=0.001)
    t.finish()

    t = table("ground")
    endpoint = t.str("endpoint", None)
    if endpoint is None:
        problems.append('[ground] endpoint is required, e.g. "tcp://10.0.0.1:5555"')
    hello_interval_s = t.float("hello_interval_s", 5.0, min=0.001)
    reconnect_after_s = t.float("reconnect_after_s", 60.0, min=0.001)
    t.finish()

    t = table("security")
    curve = t.bool("curve", True)
    secret_key = t.path("secret_key")
    server_key = t.path("server_key")
    t.finish()
    if curve and (secret_key is None or server_key is None):
        problems.append(
            "[security] curve = true needs secret_key (this agent's .key_secret) "
            "and server_key (the ground's .key); make them with "
            "`python -m agent keygen`, or set curve = false on a trusted test bench"
        )

    transport, limits = parse_transport(t := table("transport"))
    t.finish()

    t = table("retry")
    retry_settings = {
        "initial_s": t.float("initial_s", 1.0, min=0.001),
        "max_s": t.float("max_s", 60.0, min=0.001),
        "factor": t.float("factor", 2.0, min=1.0),
        "jitter": t.float("jitter", 0.1, min=0.0),
    }
    t.finish()

    t = table("outbox")
    outbox_path = t.path("path", None)
    outbox_max_entries = t.int("max_entries", 1000, min=1)
    outbox_max_mb = t.float("max_mb", 256.0, min=0.001)
    outbox_expiry_s = t.float("expiry_s", 7 * 86400.0, min=0.001)
    t.finish()

    compression = table("compression").rest()
    trainer = table("trainer").rest()
    if "kind" not in trainer:
        problems.append(
            '[trainer] kind is required: "mlp" (with data = "shard.npz") or '
            '"factory" (with factory = "module:callable")'
        )

    clock = parse_clock(table("clock"))
    orbit = raw.get("orbit")
    if orbit is not None:
        t = Table("orbit", orbit, problems, base_dir)
        for key in ("tle_line1", "tle_line2"):
            if t.str(key, None) is None:
                problems.append(f"[orbit] {key} is required")
        if not isinstance(orbit.get("stations"), list) or not orbit["stations"]:
            problems.append("[orbit] stations must be a non-empty list of tables")

    if problems:
        raise ConfigError(
            f"{source} has {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    try:
        Backoff(**retry_settings)
    except ValueError as exc:
        raise ConfigError(f"{source}: [retry] {exc}") from None
    return AgentConfig(
        id=node_id,
        endpoint=endpoint,
        state_dir=state_dir,
        max_rounds=max_rounds,
        curve=curve,
        secret_key=secret_key,
        server_key=server_key,
        transport=transport,
        limits=limits,
        retry_settings=retry_settings,
        hello_interval_s=hello_interval_s,
        reconnect_after_s=reconnect_after_s,
        outbox_path=outbox_path or state_dir / "outbox.sqlite",
        outbox_max_entries=outbox_max_entries,
        outbox_max_bytes=int(outbox_max_mb * MB),
        outbox_expiry_s=outbox_expiry_s,
        compression=compression,
        trainer=trainer,
        clock=clock,
        orbit=orbit,
        link_poll_s=link_poll_s,
        base_dir=base_dir,
    )
