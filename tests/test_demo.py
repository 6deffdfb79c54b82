"""``python -m ground demo`` end to end: real processes, sockets, CURVE, clock."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# A short run: 4 satellites over 3 simulated hours at 600x is ~18 s of wall.
SHORT = ["--agents", "4", "--hours", "3"]


def _demo(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "ground", "demo", *args],
        cwd=kwargs.pop("cwd", REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _finish(proc: subprocess.Popen, timeout_s: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the demo did not finish in {timeout_s} s:\n{err[-2000:]}")
    return proc.returncode, out, err


@pytest.mark.timeout(150)
def test_short_demo_learns_and_loses_no_update(tmp_path):
    # A relative --out, as a user types it (the generated configs once
    # resolved it twice, against their own directory).
    code, out, err = _finish(
        _demo(["--out", tmp_path.name, *SHORT], cwd=tmp_path.parent), 140
    )
    assert code == 0, err[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    run = report["run"]
    curve = [p["accuracy"] for p in run["accuracy_curve"]]
    assert curve[0] < 0.3  # the untrained model guesses
    assert run["final_accuracy"] > 0.7
    assert run["updates_lost"] == 0
    assert run["lost_satellites"] == []
    assert run["updates_aggregated"] == run["updates_sent"] > 0
    assert 0 < run["contacts_used"] <= run["contacts_predicted"]
    assert run["compression_ratio"] > 10.0
    assert run["bytes_sent"] < run["dense_bytes_equivalent"]
    for name in ("accuracy.png", "contacts.png", "bytes_per_round.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "updates lost" in out
    # Every agent stayed silent outside its predicted windows: each upload's
    # simulated time lies inside one of that satellite's contacts.
    windows = {}
    for c in run["contacts"]:
        windows.setdefault(c["satellite"], []).append((c["start_h"], c["end_h"]))
    events = tmp_path / "run-orbitfl" / "events"
    for sat, spans in windows.items():
        for line in (events / f"{sat}.jsonl").read_text().splitlines():
            e = json.loads(line)
            if e["event"] == "sent":
                t_h = e["t_sim_s"] / 3600.0
                assert any(a - 0.01 <= t_h <= b + 0.02 for a, b in spans), (sat, t_h)


@pytest.mark.timeout(150)
def test_kill_9_of_one_agent_is_counted_and_nothing_hangs(tmp_path):
    proc = _demo(["--out", str(tmp_path), "--agents", "4", "--hours", "4"])
    pids_path = tmp_path / "run-orbitfl" / "pids.json"
    events = tmp_path / "run-orbitfl" / "events"
    deadline = time.time() + 60
    victim = None
    while time.time() < deadline and proc.poll() is None:
        # Kill once the run is under way: the daemon has ACKed an update.
        if pids_path.exists() and any(
            '"ack"' in p.read_text() for p in events.glob("*.jsonl")
        ):
            pids = json.loads(pids_path.read_text())
            victim = sorted(k for k in pids if k != "ground")[1]
            os.kill(pids[victim], signal.SIGKILL)
            break
        time.sleep(0.2)
    assert victim is not None, "the run never got under way"
    code, out, err = _finish(proc, 120)
    assert code == 0, err[-3000:]
    run = json.loads((tmp_path / "report.json").read_text())["run"]
    assert run["lost_satellites"] == [victim]
    assert run["updates_lost"] == 0
    assert run["extra"]["exit_codes"][victim] == -signal.SIGKILL
    assert run["final_accuracy"] > 0.5
    assert victim in out  # named in the summary table


def _one_line_error(args: list[str]) -> str:
    code, out, err = _finish(_demo(args), 60)
    assert code == 2, (code, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ground demo: error:")
    return lines[0]


def test_unreadable_tle_file_is_one_line_error(tmp_path):
    line = _one_line_error(
        ["--out", str(tmp_path), "--tle", str(tmp_path / "nope.tle"), *SHORT]
    )
    assert "nope.tle" in line


def test_data_file_without_x_and_y_is_one_line_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((30, 4)), labels=np.zeros(30, int))
    line = _one_line_error(["--out", str(tmp_path), "--data", str(path), *SHORT])
    assert "missing array(s) X, y" in line and "images" in line


def test_zero_agents_is_one_line_error(tmp_path):
    line = _one_line_error(["--out", str(tmp_path), "--agents", "0"])
    assert "--agents 0" in line


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        try:
            return "\nState:\tZ" not in status.read_text()
        except OSError:
            return False
    return True


@pytest.mark.timeout(60)
def test_kill_9_of_the_launcher_leaves_no_process_behind(tmp_path):
    proc = _demo(["--out", str(tmp_path), "--agents", "2", "--hours", "20"])
    pids_path = tmp_path / "run-orbitfl" / "pids.json"
    deadline = time.time() + 30
    while not pids_path.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert pids_path.exists(), "the launcher never started its processes"
    time.sleep(1.0)  # let the children reach their main loops
    children = json.loads(pids_path.read_text())
    proc.kill()
    proc.communicate()
    deadline = time.time() + 15
    alive = set(children.values())
    while alive and time.time() < deadline:
        for pid in list(alive):
            if not _running(pid):
                alive.discard(pid)
        time.sleep(0.2)
    assert not alive, f"still running after the launcher died: {children}"
