"""The ground daemon's configuration file, ``ground.toml`` (read with ``tomllib``).

Every option is documented in README.md ("Agent and ground configuration").
Relative paths are resolved against the config file's directory; all problems
are collected and raised together in one ``ConfigError``.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent._clock import SimClock
from agent._config import (
    ConfigError,
    Table,
    check_sections,
    parse_clock,
    parse_transport,
    read_toml,
)
from agent._transport import TransportOptions
from agent._wire import GROUND_ID, Limits

__all__ = ["ConfigError", "GroundConfig", "load_ground_config", "parse_ground_config"]


@dataclass
class GroundConfig:
    """A parsed ``ground.toml``; see README for every option."""

    bind: str = "tcp://127.0.0.1:5555"
    state_dir: Path = Path("ground-state")
    endpoint_file: Path | None = None
    max_rounds: int = 0
    curve: bool = True
    secret_key: Path | None = None
    allowlist_dir: Path | None = None
    zap_domain: str = "orbitfl"
    transport: TransportOptions = field(default_factory=TransportOptions)
    limits: Limits = field(default_factory=Limits)
    min_participants: int = 1
    expected_agents: list[str] = field(default_factory=list)
    deadline_s: float = 600.0
    push_model: bool = True
    max_inflight: int = 16
    credit_timeout_s: float = 30.0
    strategy: str = "fedavg"
    aggregation_options: dict[str, Any] = field(default_factory=dict)
    model_npz: Path | None = None
    model_trainer: dict[str, Any] | None = None
    model_zeros: dict[str, list[int]] | None = None
    metrics_enabled: bool = True
    metrics_addr: str = "127.0.0.1"
    metrics_port: int = 9108
    clock: SimClock | None = None
    id: str = GROUND_ID


_SECTIONS = (
    "ground",
    "security",
    "transport",
    "rounds",
    "aggregation",
    "model",
    "metrics",
    "clock",
)


def load_ground_config(path: str | Path) -> GroundConfig:
    path = Path(path)
    return parse_ground_config(read_toml(path), path.resolve().parent, str(path))


def parse_ground_config(
    raw: dict[str, Any], base_dir: Path, source: str = "ground config"
) -> GroundConfig:
    """Validate a ``ground.toml`` already read into a dict."""
    problems: list[str] = []
    check_sections(raw, _SECTIONS, problems)

    def table(name: str) -> Table:
        return Table(name, raw.get(name), problems, base_dir)

    t = table("ground")
    bind = t.str("bind", "tcp://127.0.0.1:5555")
    state_dir = t.path("state_dir", "ground-state")
    endpoint_file = t.path("endpoint_file")
    max_rounds = t.int("max_rounds", 0, min=0)
    max_inflight = t.int("max_inflight", 16, min=1)
    credit_timeout_s = t.float("credit_timeout_s", 30.0, min=0.001)
    t.finish()

    t = table("security")
    curve = t.bool("curve", True)
    secret_key = t.path("secret_key")
    allowlist_dir = t.path("allowlist_dir")
    zap_domain = t.str("zap_domain", "orbitfl")
    t.finish()
    if curve and (secret_key is None or allowlist_dir is None):
        problems.append(
            "[security] curve = true needs secret_key (the ground's .key_secret) "
            "and allowlist_dir (a directory of agents' .key files); make keys "
            "with `python -m ground keygen DIR NAME`, or set curve = false on a "
            "trusted test bench"
        )

    transport, limits = parse_transport(t := table("transport"))
    t.finish()

    t = table("rounds")
    min_participants = t.int("min_participants", 1, min=1)
    expected_agents = t.str_list("expected_agents", [])
    deadline_s = t.float("deadline_s", 600.0, min=0.001)
    push_model = t.bool("push_model", True)
    t.finish()

    t = table("aggregation")
    strategy = t.str("strategy", "fedavg")
    options = t.rest()
    for key, value in list(options.items()):
        if isinstance(value, list):
            options[key] = tuple(value)  # adam_betas

    t = table("model")
    model_npz = t.path("npz")
    model_trainer = t._get("trainer", None, (dict,), "a table")
    model_zeros = t._get("zeros", None, (dict,), "a table of name = [shape]")
    t.finish()
    given = [k for k, v in (("npz", model_npz), ("trainer", model_trainer),
                            ("zeros", model_zeros)) if v is not None]  # fmt: skip
    if len(given) != 1:
        problems.append(
            '[model] needs exactly one of npz = "init.npz", trainer = {kind = '
            f"...}} or zeros = {{name = [shape]}}; got {given or 'none'}"
        )

    t = table("metrics")
    metrics_enabled = t.bool("enabled", True)
    metrics_addr = t.str("addr", "127.0.0.1")
    metrics_port = t.int("port", 9108, min=0)
    t.finish()

    clock = parse_clock(table("clock"))

    if problems:
        raise ConfigError(
            f"{source} has {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )
    return GroundConfig(
        bind=bind,
        state_dir=state_dir,
        endpoint_file=endpoint_file,
        max_rounds=max_rounds,
        curve=curve,
        secret_key=secret_key,
        allowlist_dir=allowlist_dir,
        zap_domain=zap_domain,
        transport=transport,
        limits=limits,
        min_participants=min_participants,
        expected_agents=expected_agents,
        deadline_s=deadline_s,
        push_model=push_model,
        max_inflight=max_inflight,
        credit_timeout_s=credit_timeout_s,
        strategy=strategy,
        aggregation_options=options,
        model_npz=model_npz,
        model_trainer=model_trainer,
        model_zeros=model_zeros,
        metrics_enabled=metrics_enabled,
        metrics_addr=metrics_addr,
        metrics_port=metrics_port,
        clock=clock,
    )
