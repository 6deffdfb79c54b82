"""A ground daemon and agents as real processes: configs, keys, accounting.

The bench writes a ``ground.toml`` and one ``agent.toml`` per agent (in the
schema of ``ground._config`` and ``agent._config``), makes CURVE key pairs
with ``agent._keys``, runs ``python -m ground serve`` and ``python -m agent
run`` as subprocesses (in namespaces or the arm64 root filesystem when asked)
and, afterwards, reconstructs what happened to every update from three
independent records:

- the agents' logs: every update stored in an outbox (``trained round r ...
  update seq s``), expired or dropped by the outbox policy, or refused by the
  ground (NACK);
- the daemon's journal: every update it accepted, with the round (epoch) it
  was accepted in, and its log: how each round closed;
- the final global model, which with :mod:`hil_tests._trainer` shows how many
  times each update was aggregated.
"""

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent._keys import make_keypair
from ground._journal import read_checkpoint
from hil_tests._ledger import Accounting

PORT = 5555
# The model is accurate to float32; 1/n for n <= 64 is off by < 1e-7.
SLOT_TOLERANCE = 1e-5


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def write_toml(path: Path, doc: dict[str, dict[str, Any]]) -> Path:
    """Write ``{section: {key: value}}``; lists of tables as ``[[section]]``."""
    lines = []
    for section, body in doc.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
                lines.append("")
            continue
        lines.append(f"[{section}]")
        subtables = {k: v for k, v in body.items() if isinstance(v, list) and v
                     and isinstance(v[0], dict)}  # fmt: skip
        lines += [
            f"{k} = {toml_value(v)}" for k, v in body.items() if k not in subtables
        ]
        lines.append("")
        for k, items in subtables.items():
            for item in items:
                lines.append(f"[[{section}.{k}]]")
                lines += [f"{kk} = {toml_value(vv)}" for kk, vv in item.items()]
                lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


@dataclass
class Keys:
    """Key pairs for the ground and each named agent, plus the allowlist."""

    root: Path
    agents: list[str]
    allowlist: Path = field(init=False)
    ground_public: Path = field(init=False)
    ground_secret: Path = field(init=False)

    def __post_init__(self) -> None:
        self.allowlist = self.root / "allowlist"
        self.allowlist.mkdir(parents=True, exist_ok=True)
        self.ground_public, self.ground_secret = make_keypair(self.root, "ground")
        for name in self.agents:
            public, _ = make_keypair(self.root / "agents", name)
            (self.allowlist / public.name).write_bytes(public.read_bytes())

    def agent_secret(self, name: str) -> Path:
        return self.root / "agents" / f"{name}.key_secret"

    def stranger(self, name: str) -> Path:
        """A key pair the ground does not know."""
        _, secret = make_keypair(self.root / "strangers", name)
        return secret


def transport_section() -> dict[str, Any]:
    # Fast reconnects: the daemon restarts within a second after a kill.
    return {
        "heartbeat_ivl_ms": 1000,
        "heartbeat_timeout_ms": 3000,
        "reconnect_ivl_ms": 100,
        "reconnect_ivl_max_ms": 1000,
        "linger_ms": 0,
        "max_message_mb": 4.0,
    }


def ground_config(
    path: Path,
    *,
    bind: str,
    state_dir: Path,
    keys: Keys | None,
    expected_agents: list[str],
    n_slots: int,
    deadline_s: float,
    clock: dict[str, Any] | None,
    min_participants: int = 1,
    max_rounds: int = 0,
) -> Path:
    doc: dict[str, Any] = {
        "ground": {"bind": bind, "state_dir": state_dir, "max_rounds": max_rounds},
        "security": (
            {
                "curve": True,
                "secret_key": keys.ground_secret,
                "allowlist_dir": keys.allowlist,
                "zap_domain": "orbitfl",
            }
            if keys
            else {"curve": False}
        ),  # fmt: skip
        "transport": transport_section(),
        "rounds": {
            "min_participants": min_participants,
            "expected_agents": expected_agents,
            "deadline_s": deadline_s,
        },
        "aggregation": {"strategy": "fedavg"},
        "model": {"zeros": {"w": [n_slots]}},
        "metrics": {"enabled": False},
    }
    if clock:
        doc["clock"] = clock
    return write_toml(path, doc)


def agent_config(
    path: Path,
    *,
    agent_id: str,
    agent_index: int,
    n_agents: int,
    rounds_per_agent: int,
    endpoint: str,
    state_dir: Path,
    keys: Keys | None,
    max_rounds: int,
    clock: dict[str, Any] | None = None,
    orbit: dict[str, Any] | None = None,
    extra: int = 0,
    outbox_expiry_s: float = 7 * 86400.0,
    link_poll_s: float = 0.05,
) -> Path:
    doc: dict[str, Any] = {
        "agent": {
            "id": agent_id,
            "state_dir": state_dir,
            "max_rounds": max_rounds,
            "link_poll_s": link_poll_s,
        },
        "ground": {
            "endpoint": endpoint,
            "hello_interval_s": 0.5,
            "reconnect_after_s": 5.0,
        },  # fmt: skip
        "security": (
            {
                "curve": True,
                "secret_key": keys.agent_secret(agent_id),
                "server_key": keys.ground_public,
            }
            if keys
            else {"curve": False}
        ),  # fmt: skip
        "transport": transport_section(),
        "retry": {"initial_s": 0.3, "max_s": 2.0, "factor": 2.0, "jitter": 0.1},
        "outbox": {"max_entries": 100, "max_mb": 64.0, "expiry_s": outbox_expiry_s},
        "trainer": {
            "kind": "factory",
            "factory": "hil_tests._trainer:make",
            "agent_index": agent_index,
            "rounds_per_agent": rounds_per_agent,
            "n_agents": n_agents,
            "extra": extra,
        },
    }
    if clock:
        doc["clock"] = clock
    if orbit:
        doc["orbit"] = orbit
    return write_toml(path, doc)


def one_agent_configs(
    ground_path: Path,
    agent_path: Path,
    *,
    agent_id: str,
    bind: str,
    endpoint: str,
    ground_state: Path,
    agent_state: Path,
    keys: Keys | None,
    rounds: int,
    extra: int,
) -> tuple[Path, Path]:
    """Write the configs of a one-agent run on the real-time clock.

    A FEDAVG daemon that expects only ``agent_id`` (a round closes on its
    update, or after 600 s), and that agent, which stops after ``rounds``
    rounds; ``extra`` pads the model (and every update) by that many floats.
    """
    ground = ground_config(
        ground_path,
        bind=bind,
        state_dir=ground_state,
        keys=keys,
        expected_agents=[agent_id],
        n_slots=rounds + 1 + extra,
        deadline_s=600.0,
        clock=None,
    )
    agent = agent_config(
        agent_path,
        agent_id=agent_id,
        agent_index=0,
        n_agents=1,
        rounds_per_agent=rounds + 1,
        endpoint=endpoint,
        state_dir=agent_state,
        keys=keys,
        max_rounds=rounds,
        extra=extra,
    )
    return ground, agent


# ---------------------------------------------------------------- accounting

_TRAINED = re.compile(r"(\S+): trained round (\d+) .*update seq (\d+)")
_EXPIRED = re.compile(r"(\S+): update \(round (\d+), seq (\d+)\) expired unsent")
_DROPPED = re.compile(
    r"(\S+): outbox full: dropped the update of round (\d+) \(seq (\d+)\)"
)
_REFUSED = re.compile(r"(\S+): ground refused \(round (\d+), seq (\d+)\): (\w+)")
_ACKED = re.compile(r"(\S+): update \(round (\d+), seq (\d+)\) ACKed")
_CLOSED = re.compile(r"round (\d+) closed \(([^)]*)\)(: aggregated (\d+)| with (\d+))?")


@dataclass
class AgentRecord:
    produced: set = field(default_factory=set)
    expired: set = field(default_factory=set)
    refused: dict = field(default_factory=dict)
    acked: set = field(default_factory=set)


def parse_agent_log(text: str) -> AgentRecord:
    rec = AgentRecord()
    for line in text.splitlines():
        if m := _TRAINED.search(line):
            rec.produced.add((m[1], int(m[2]), int(m[3])))
        elif m := _EXPIRED.search(line) or _DROPPED.search(line):
            rec.expired.add((m[1], int(m[2]), int(m[3])))
        elif m := _REFUSED.search(line):
            rec.refused[(m[1], int(m[2]), int(m[3]))] = m[4]
        elif m := _ACKED.search(line):
            rec.acked.add((m[1], int(m[2]), int(m[3])))
    return rec


def round_outcomes(daemon_log: str) -> dict[int, tuple[str, int]]:
    """round -> (outcome, updates) from the daemon's log; the last word wins
    (a round closed just before a kill may be logged again after replay)."""
    out = {}
    for line in daemon_log.splitlines():
        if m := _CLOSED.search(line):
            if m[4] is not None:
                out[int(m[1])] = ("aggregated", int(m[4]))
            elif "no updates" in line:
                out[int(m[1])] = ("carried_over", 0)
            else:
                out[int(m[1])] = ("below_quorum", int(m[5] or 0))
    return out


def journal_rows(state_dir: Path) -> list[tuple[str, int, int, int]]:
    """(agent, round, seq, epoch) of every update the daemon accepted.

    The daemon keeps the keys of closed rounds and the records of the open
    one (``ground._journal.Journal.seen``).  FEDAVG takes updates only for
    the open round, so the round an update was accepted in (its epoch) is
    its own round number.
    """
    from ground._journal import Journal

    journal = Journal(state_dir)
    try:
        return sorted((a, r, s, r) for a, r, s in journal.seen())
    finally:
        journal.close()


@dataclass
class Outcome:
    accounting: Accounting
    refused: dict
    pending_in_outbox: set
    journal: list
    open_round: int
    model_problems: list[str]
    rounds: dict


def account(
    agent_logs: dict[str, str],
    agent_outboxes: dict[str, Path],
    state_dir: Path,
    slot_of: dict[str, tuple[int, int]],
    daemon_log: str,
    extra_produced: set | None = None,
    candidates: set | None = None,
) -> Outcome:
    """Reconstruct the fate of every update from logs, outboxes and the model.

    ``slot_of[agent_id] = (agent_index, rounds_per_agent)`` locates each
    agent's slots in the model (see :mod:`hil_tests._trainer`).  Whether and
    how often an update was aggregated is read from the final model, not from
    the daemon's bookkeeping: slot (agent, round) holds k/n when the update
    was aggregated k times into a round the daemon logged as closed with n
    updates.  The daemon's journal is checked against that separately (it
    must remember every aggregated update, or a late resend could be taken
    twice).  ``extra_produced`` adds updates owed by peers without an agent
    log; ``candidates`` names updates that may be in the model but are owed
    nothing (a hostile peer's sends that got no ACK).
    """
    from agent._outbox import Outbox

    acc = Accounting()
    refused: dict = {}
    for text in agent_logs.values():
        rec = parse_agent_log(text)
        acc.produced |= rec.produced
        acc.expired |= rec.expired
        refused.update(rec.refused)
    acc.refused = set(refused)
    pending = set()
    for agent_id, path in agent_outboxes.items():
        if path.exists():
            with Outbox(path) as box:
                pending |= {(agent_id, e.round, e.seq) for e in box.pending()}
    # An update stored just before a kill -9 may miss its log line; the
    # outbox or the journal still names it, and it counts as produced.
    rows = journal_rows(state_dir)
    journal_keys = {(a, r, s) for a, r, s, _ in rows}
    cp = read_checkpoint(state_dir / "checkpoint.msgpack")
    open_round = cp.round if cp else 0
    acc.produced |= {k for k in pending if k[0] in agent_logs}
    acc.produced |= {k for k in journal_keys if k[0] in agent_logs}
    acc.produced |= extra_produced or set()

    problems: list[str] = []
    rounds = round_outcomes(daemon_log)
    w = (
        np.asarray(cp.model["w"], dtype=np.float64)
        if cp is not None
        else np.zeros(0, np.float64)
    )
    by_slot: dict[int, list] = {}
    for key in acc.produced | journal_keys | (candidates or set()):
        if key[0] in slot_of:
            index, rounds_per_agent = slot_of[key[0]]
            by_slot.setdefault(index * rounds_per_agent + key[1], []).append(key)
    claimed = np.zeros(w.size, bool)
    for slot, keys in sorted(by_slot.items()):
        if slot >= w.size:
            problems.append(f"update(s) {keys} have slot {slot} past the model")
            continue
        claimed[slot] = True
        value = w[slot]
        if abs(value) <= SLOT_TOLERANCE:
            continue
        if len(keys) > 1:
            problems.append(f"{keys}: two updates of one agent for one round")
            continue
        key = keys[0]
        outcome, n = rounds.get(key[1], ("not closed", 0))
        times = value * n
        if outcome != "aggregated" or abs(times - round(times)) > n * SLOT_TOLERANCE:
            problems.append(
                f"model slot of {key} holds {value:.6f}, not a multiple of 1/n "
                f"for round {key[1]} ({outcome}, n={n})"
            )
            continue
        acc.aggregated[key] += int(round(times))
        if key not in journal_keys:
            problems.append(
                f"{key} is aggregated in the model but the daemon's journal "
                "does not remember it: a late resend would not be recognised "
                "as a duplicate"
            )
    unclaimed = np.flatnonzero((np.abs(w) > SLOT_TOLERANCE) & ~claimed)
    for slot in unclaimed[:10]:
        problems.append(f"model slot {slot} holds {w[slot]:.6f} but no update has it")
    # Each closed round's updates must add up to exactly one unit of weight.
    per_round = Counter(
        k[1] for k, times in acc.aggregated.items() for _ in range(times)
    )
    for r, (outcome, n) in sorted(rounds.items()):
        if outcome == "aggregated" and per_round.get(r, 0) != n and r < open_round:
            problems.append(
                f"round {r} was logged closed with {n} update(s); the model "
                f"shows {per_round.get(r, 0)}"
            )
    return Outcome(acc, refused, pending, rows, open_round, problems, rounds)
