"""Benchmark the main job: ``python -m ground demo --compare`` against its targets.

Runs the default demo (8 agents, Walker constellation, digits, FEDBUFF with
compressed updates) and, in the same invocation, the dense synchronous FedAvg
baseline on the same orbits and data; then prints each target of issue 7 with
the measured value and the ratio to the baseline.

    python bench/demo.py [--out DIR] [--repeat N]

The demo's own wall time is measured from the launcher's start to the end of
the first run (the baseline's time is not counted: without ``--compare`` the
default demo runs only the first).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _hours(h: float | None) -> str:
    return "not reached" if h is None else f"{h:.2f}"


def run_once(out: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "ground", "demo", "--out", str(out), "--compare"],
        env=env,
        capture_output=True,
        text=True,
    )
    total_s = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    report["bench_total_wall_s"] = total_s
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores")
    rows = []
    for i in range(args.repeat):
        out = args.out or Path(tempfile.mkdtemp(prefix="orbitfl-bench-"))
        out = out / f"rep{i}" if args.repeat > 1 else out
        report = run_once(out)
        run, base, cmp = report["run"], report["baseline"], report["comparison"]
        # The default demo alone: its own run plus the launcher's set-up,
        # i.e. the total minus the baseline run's wall time.
        demo_wall_s = report["bench_total_wall_s"] - base["wall_s"]
        rows.append((run, base, cmp, demo_wall_s))

    print()
    header = f"{'target':44} {'goal':>10} {'measured':>12} {'baseline':>10} {'ok':>4}"
    print(header)
    print("-" * len(header))
    for run, base, cmp, demo_wall_s in rows:
        h_run = run["hours_to_85"]
        h_base = base["hours_to_85"]
        lines = [
            ("default demo wall time (s)", "< 180", f"{demo_wall_s:.0f}", "-",
             demo_wall_s < 180),
            ("final test accuracy (%)", ">= 90", f"{100 * run['final_accuracy']:.1f}",
             f"{100 * base['final_accuracy']:.1f}", run["final_accuracy"] >= 0.90),
            ("accuracy vs baseline (points)", ">= -1",
             f"{cmp['accuracy_difference_points']:+.1f}", "0",
             cmp["accuracy_difference_points"] >= -1.0),
            ("bytes sent, fraction of baseline (%)", "<= 5",
             f"{100 * cmp['bytes_fraction_of_baseline']:.1f}", "100",
             cmp["bytes_fraction_of_baseline"] <= 0.05),
            ("compression ratio vs dense, same updates", "-",
             f"{run['compression_ratio']:.1f}x", "1.0x", True),
            ("sim hours to 85%, fraction of baseline", "<= 0.5",
             "-" if cmp["hours_to_85_fraction_of_baseline"] is None
             else f"{cmp['hours_to_85_fraction_of_baseline']:.2f}",
             "1", (cmp["hours_to_85_fraction_of_baseline"] or 9) <= 0.5),
            ("sim hours to 85%", "-", _hours(h_run), _hours(h_base), True),
            ("updates lost", "0", str(run["updates_lost"]),
             str(base["updates_lost"]), run["updates_lost"] == 0),
            ("updates relayed over ISLs (aggregated)", "-",
             f"{run.get('updates_relayed', 0)} "
             f"({run['extra'].get('relayed_aggregated', 0)})",
             str(base.get("updates_relayed", 0)), True),
        ]  # fmt: skip
        for name, goal, measured, baseline, ok in lines:
            print(
                f"{name:44} {goal:>10} {measured:>12} {baseline:>10} "
                f"{'yes' if ok else 'NO':>4}"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
