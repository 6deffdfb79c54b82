"""Count faults and account for every update; print the summary table.

Each test that injects faults records one ``RunSummary``: the faults it
injected by kind and the fate of every update the agents produced.  The
summaries are appended as JSON lines to a file in the work directory, so the
pytest session (and ``python -m hil_tests.summary``) can print one table at
the end, whatever process recorded them.
"""

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK_DIR = Path(os.environ.get("HIL_WORK", REPO / "hil_tests" / ".work"))
SUMMARY_FILE = WORK_DIR / "summary.jsonl"

# An update is named by who sent it, for which round, and its sequence number.
UpdateKey = tuple[str, int, int]


@dataclass
class Accounting:
    """The fate of every update: aggregated once, expired, lost or duplicated."""

    produced: set[UpdateKey] = field(default_factory=set)
    aggregated: Counter = field(default_factory=Counter)
    expired: set[UpdateKey] = field(default_factory=set)
    # NACKed by the ground with a reason the agent logged (e.g. an update
    # that missed its round): accounted for, not silently lost.
    refused: set[UpdateKey] = field(default_factory=set)

    def add_aggregated(self, keys: Iterable[UpdateKey]) -> None:
        self.aggregated.update(keys)

    @property
    def lost(self) -> set[UpdateKey]:
        return self.produced - set(self.aggregated) - self.expired - self.refused

    @property
    def duplicated(self) -> dict[UpdateKey, int]:
        return {k: n for k, n in self.aggregated.items() if n > 1}

    @property
    def phantom(self) -> set[UpdateKey]:
        """Aggregated updates that no agent produced (a forged or replayed id)."""
        return set(self.aggregated) - self.produced

    @property
    def expired_and_aggregated(self) -> set[UpdateKey]:
        """Accepted by the ground, but the ACK was lost (a kill) and the outbox
        expired the entry before a resend: aggregated once, and fine."""
        return self.expired & set(self.aggregated)

    def problems(self) -> list[str]:
        """Every breach of the invariant, as sentences with the offending ids."""
        out = []
        if self.lost:
            out.append(
                f"{len(self.lost)} update(s) produced but neither aggregated nor "
                f"expired: {sorted(self.lost)[:10]}"
            )
        if self.duplicated:
            out.append(
                f"{len(self.duplicated)} update(s) aggregated more than once: "
                f"{sorted(self.duplicated.items())[:10]}"
            )
        if self.phantom:
            out.append(
                f"{len(self.phantom)} aggregated update(s) that no agent "
                f"produced: {sorted(self.phantom)[:10]}"
            )
        if self.refused & set(self.aggregated):
            out.append(
                "update(s) both refused by the ground and aggregated: "
                f"{sorted(self.refused & set(self.aggregated))[:10]}"
            )
        return out


@dataclass
class RunSummary:
    name: str
    faults: Counter = field(default_factory=Counter)
    accounting: Accounting = field(default_factory=Accounting)
    notes: dict = field(default_factory=dict)

    def fault(self, kind: str, n: int = 1) -> None:
        self.faults[kind] += n

    def to_json(self) -> dict:
        a = self.accounting
        return {
            "name": self.name,
            "faults": dict(self.faults),
            "produced": len(a.produced),
            "aggregated": sum(1 for k in a.aggregated if k in a.produced),
            "expired": len(a.expired),
            "refused": len(a.refused),
            "lost": len(a.lost),
            "duplicated": len(a.duplicated),
            "phantom": len(a.phantom),
            "notes": self.notes,
        }

    def record(self, path: Path = SUMMARY_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(self.to_json(), sort_keys=True) + "\n")


def load(path: Path = SUMMARY_FILE) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def format_table(rows: list[dict]) -> str:
    """The end-of-run table: faults by kind, then the fate of the updates."""
    if not rows:
        return "no hardware-in-the-loop run recorded a summary"
    kinds = sorted({k for r in rows for k in r["faults"]})
    lines = []
    w = max(len("run"), *(len(r["name"]) for r in rows))
    kw = max([len("kind")] + [len(k) for k in kinds])
    lines.append("faults injected by kind")
    lines.append(f"  {'kind':<{kw}}  {'count':>6}")
    total = Counter()
    for r in rows:
        total.update(r["faults"])
    for k in kinds:
        lines.append(f"  {k:<{kw}}  {total[k]:>6}")
    lines.append(f"  {'total':<{kw}}  {sum(total.values()):>6}")
    lines.append("")
    cols = (
        "faults",
        "produced",
        "aggregated",
        "expired",
        "refused",
        "lost",
        "duplicated",
    )
    header = f"  {'run':<{w}}  " + "  ".join(f"{c:>10}" for c in cols)
    lines.append("updates by run (lost and duplicated must be 0)")
    lines.append(header)
    sums = Counter()
    for r in rows:
        vals = [sum(r["faults"].values())] + [r.get(c, 0) for c in cols[1:]]
        sums.update(dict(zip(cols, vals, strict=True)))
        lines.append(f"  {r['name']:<{w}}  " + "  ".join(f"{v:>10}" for v in vals))
    lines.append(f"  {'total':<{w}}  " + "  ".join(f"{sums[c]:>10}" for c in cols))
    return "\n".join(lines)
