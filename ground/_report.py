"""The demo's report: ``report.json``, the summary table and the PNG plots.

One run (the demo, or the dense synchronous baseline of ``--compare``) is
summarised by a ``RunSummary``.  ``write_report`` puts one or two of them in
``report.json`` and draws, with matplotlib's non-interactive Agg backend:

- ``accuracy.png``: test accuracy against simulated hours (both runs);
- ``contacts.png``: the predicted contact windows per satellite and station,
  with the ones used for an upload drawn solid;
- ``bytes_per_round.png``: bytes the satellites sent per aggregation round.

Field names carry their units (``_h``, ``_s``, ``_bytes``).
"""

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPORT_VERSION = 1
ACCURACY_MILESTONE = 0.85
# Simulated hours at which the summary table shows the test accuracy.
CHECKPOINT_HOURS = (1.0, 3.0, 6.0, 12.0)


@dataclass
class ContactRecord:
    """One predicted pass of a satellite over a station, in simulated hours."""

    satellite: str
    station: str
    start_h: float
    end_h: float
    used: bool = False


@dataclass
class RunSummary:
    """Everything the report says about one run."""

    label: str
    strategy: str
    compression: str
    num_satellites: int
    # (simulated hours since start, test accuracy, global model version)
    accuracy_curve: list[tuple[float, float, int]] = field(default_factory=list)
    rounds: int = 0
    updates_sent: int = 0
    updates_aggregated: int = 0
    updates_lost: int = 0
    # Updates handed to a neighbour over an ISL (custody transfer) for it to
    # upload; each is still counted once in updates_sent/aggregated.
    updates_relayed: int = 0
    lost_satellites: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    dense_bytes_equivalent: int = 0
    bytes_per_round: list[int] = field(default_factory=list)
    contacts_predicted: int = 0
    contacts_used: int = 0
    sim_hours: float = 0.0
    wall_s: float = 0.0
    contacts: list[ContactRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float | None:
        return self.accuracy_curve[-1][1] if self.accuracy_curve else None

    @property
    def best_accuracy(self) -> float | None:
        return (
            max(a for _, a, _ in self.accuracy_curve) if self.accuracy_curve else None
        )

    @property
    def compression_ratio(self) -> float | None:
        """Dense float32 bytes over bytes sent; None before anything was sent."""
        if self.bytes_sent <= 0:
            return None
        return self.dense_bytes_equivalent / self.bytes_sent

    def accuracy_at(self, hours: float) -> float | None:
        """Test accuracy of the model current at ``hours`` simulated hours."""
        current = None
        for h, acc, _ in self.accuracy_curve:
            if h > hours:
                break
            current = acc
        return current

    def hours_to(self, accuracy: float) -> float | None:
        """Simulated hours until test accuracy first reached ``accuracy``."""
        for hours, acc, _ in self.accuracy_curve:
            if acc >= accuracy:
                return hours
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accuracy_curve"] = [
            {"sim_hours": h, "accuracy": a, "model_version": v}
            for h, a, v in self.accuracy_curve
        ]
        d["final_accuracy"] = self.final_accuracy
        d["best_accuracy"] = self.best_accuracy
        d["compression_ratio"] = self.compression_ratio
        d[f"hours_to_{round(ACCURACY_MILESTONE * 100)}"] = self.hours_to(
            ACCURACY_MILESTONE
        )
        return d


def comparison(run: RunSummary, baseline: RunSummary) -> dict[str, Any]:
    """The figures that compare a run with the dense synchronous baseline."""
    out: dict[str, Any] = {
        "bytes_fraction_of_baseline": (
            run.bytes_sent / baseline.bytes_sent if baseline.bytes_sent else None
        ),
        "accuracy_difference_points": None,
        "hours_to_85_fraction_of_baseline": None,
    }
    if run.final_accuracy is not None and baseline.final_accuracy is not None:
        out["accuracy_difference_points"] = 100.0 * (
            run.final_accuracy - baseline.final_accuracy
        )
    h_run = run.hours_to(ACCURACY_MILESTONE)
    h_base = baseline.hours_to(ACCURACY_MILESTONE)
    if h_run is not None and h_base:
        out["hours_to_85_fraction_of_baseline"] = h_run / h_base
    return out


def build_report(
    runs: Sequence[RunSummary], settings: dict[str, Any]
) -> dict[str, Any]:
    """The content of ``report.json``: settings, each run, and the comparison."""
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "settings": settings,
        "run": runs[0].to_dict(),
    }
    if len(runs) > 1:
        report["baseline"] = runs[1].to_dict()
        report["comparison"] = comparison(runs[0], runs[1])
    return report


def _fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.1f}%"


def _fmt_h(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} h"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def summary_rows(runs: Sequence[RunSummary]) -> list[tuple[str, ...]]:
    """Rows of the summary table: a label, then one cell per run."""
    rows: list[tuple[str, ...]] = [
        ("strategy", *(r.strategy for r in runs)),
        ("compression", *(r.compression for r in runs)),
        ("simulated time", *(_fmt_h(r.sim_hours) for r in runs)),
        ("wall time", *(f"{r.wall_s:.0f} s" for r in runs)),
        ("final test accuracy", *(_fmt_pct(r.final_accuracy) for r in runs)),
        *(
            (f"test accuracy at {h:g} h", *(_fmt_pct(r.accuracy_at(h)) for r in runs))
            for h in CHECKPOINT_HOURS
            if h < max(r.sim_hours for r in runs)
        ),
        ("best test accuracy", *(_fmt_pct(r.best_accuracy) for r in runs)),
        (
            f"time to {ACCURACY_MILESTONE:.0%}",
            *(_fmt_h(r.hours_to(ACCURACY_MILESTONE)) for r in runs),
        ),
        ("rounds (model versions)", *(str(r.rounds) for r in runs)),
        ("updates sent", *(str(r.updates_sent) for r in runs)),
        ("updates aggregated", *(str(r.updates_aggregated) for r in runs)),
        ("updates relayed over ISLs", *(str(r.updates_relayed) for r in runs)),
        ("updates lost", *(str(r.updates_lost) for r in runs)),
        (
            "satellites lost",
            *(", ".join(r.lost_satellites) or "none" for r in runs),
        ),
        ("bytes sent by satellites", *(_fmt_bytes(r.bytes_sent) for r in runs)),
        (
            "dense float32 equivalent",
            *(_fmt_bytes(r.dense_bytes_equivalent) for r in runs),
        ),
        (
            "compression ratio",
            *(
                "-" if r.compression_ratio is None else f"{r.compression_ratio:.1f}x"
                for r in runs
            ),
        ),
        (
            "contacts used / predicted",
            *(f"{r.contacts_used} / {r.contacts_predicted}" for r in runs),
        ),
    ]
    if len(runs) > 1 and runs[1].bytes_sent:
        rows.append(
            (
                "bytes vs baseline",
                _fmt_pct(runs[0].bytes_sent / runs[1].bytes_sent),
                "100.0%",
            )
        )
    return rows


def summary_table(runs: Sequence[RunSummary]):
    """A rich Table of ``summary_rows``."""
    from rich.table import Table

    table = Table(title="orbitfl demo")
    table.add_column("")
    for r in runs:
        table.add_column(r.label, justify="right")
    for row in summary_rows(runs):
        table.add_row(*row)
    return table


def _plot_accuracy(runs: Sequence[RunSummary], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        if r.accuracy_curve:
            hours = [h for h, _, _ in r.accuracy_curve]
            acc = [100.0 * a for _, a, _ in r.accuracy_curve]
            ax.step(hours, acc, where="post", label=f"{r.label} ({r.strategy})")
    ax.axhline(100.0 * ACCURACY_MILESTONE, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("simulated time (h)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_contacts(run: RunSummary, path: Path) -> None:
    import matplotlib.pyplot as plt

    satellites = sorted({c.satellite for c in run.contacts})
    stations = sorted({c.station for c in run.contacts})
    cmap = plt.get_cmap("tab10")
    colour = {s: cmap(i % 10) for i, s in enumerate(stations)}
    height = max(2.5, 0.35 * len(satellites) + 1.2)
    fig, ax = plt.subplots(figsize=(9, height))
    for row, sat in enumerate(satellites):
        for c in run.contacts:
            if c.satellite != sat:
                continue
            ax.broken_barh(
                [(c.start_h, max(c.end_h - c.start_h, 1e-3))],
                (row - 0.35, 0.7),
                facecolors=colour[c.station],
                alpha=0.95 if c.used else 0.3,
                edgecolor="black" if c.used else "none",
                linewidth=0.5,
            )
    ax.set_yticks(range(len(satellites)), satellites)
    ax.set_xlabel("simulated time (h); solid = used for an upload")
    ax.set_xlim(0, max(run.sim_hours, 1e-3))
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[s], label=s) for s in stations]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("contact windows per satellite and station")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bytes(runs: Sequence[RunSummary], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        if r.bytes_per_round:
            ax.plot(
                range(1, len(r.bytes_per_round) + 1),
                r.bytes_per_round,
                marker=".",
                label=r.label,
            )
    ax.set_xlabel("aggregation round")
    ax.set_ylabel("bytes sent by satellites")
    if any(b > 0 for r in runs for b in r.bytes_per_round):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to report.json")


def _finite(obj: Any) -> Any:
    """JSON has no NaN: replace non-finite floats by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_report(
    out_dir: str | Path, runs: Sequence[RunSummary], settings: dict[str, Any]
) -> dict[str, Path]:
    """Write report.json and the three plots; return their paths by name."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out_dir / "report.json",
        "accuracy": out_dir / "accuracy.png",
        "contacts": out_dir / "contacts.png",
        "bytes_per_round": out_dir / "bytes_per_round.png",
    }
    report = _finite(build_report(runs, settings))
    tmp = paths["report"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    tmp.replace(paths["report"])
    _plot_accuracy(runs, paths["accuracy"])
    _plot_contacts(runs[0], paths["contacts"])
    _plot_bytes(runs, paths["bytes_per_round"])
    return paths
