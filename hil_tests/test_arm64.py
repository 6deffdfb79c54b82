"""The agent on an emulated arm64 flight computer, under qemu.

The Debian bookworm arm64 root filesystem of
``hil_tests/arm64/build_rootfs.sh``, with orbitfl's kernels compiled inside
by its own gcc.  The same checks over ssh, against a real device or the root
filesystem's own sshd, are in ``test_device_ssh.py``.  Times under qemu are
relative only: user-mode emulation runs aarch64 code 5 to 20 times slower.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil_tests import _rootfs
from hil_tests._device import DIGESTS, compare_digests, host_digests, per_round_s
from hil_tests._faults import Proc
from hil_tests._ledger import WORK_DIR, RunSummary
from hil_tests._scenario import Keys, account, one_agent_configs

REPO = Path(__file__).resolve().parent.parent
EXTRA = 20_000  # float32 padding: an 80 kB update


@pytest.fixture(scope="module")
def arm64():
    reason = _rootfs.unavailable_reason()
    if reason:
        pytest.skip(reason)
    # A no-op unless the source changed since the root filesystem was built;
    # then it recompiles the kernels inside (a minute or two per kernel).
    _rootfs.rebuild_project()
    return _rootfs


@pytest.mark.timeout(1800)
def test_kernels_on_arm64_give_bit_identical_outputs_to_x86_64(arm64):
    host = host_digests()
    # The script is not part of the sdist: copy it next to the source.
    inside = f"{arm64.OPT}/hil/kernel_digests.py"
    arm64.host_path(inside).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / DIGESTS, arm64.host_path(inside))
    proc = subprocess.run(
        arm64.rootfs_argv([arm64.VENV_PYTHON, inside], env={"PYTHONPATH": arm64.SRC}),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    device = json.loads(proc.stdout)
    assert device["machine"] == "aarch64", device["machine"]
    assert host["machine"] == "x86_64", host["machine"]
    pyx = sorted(p.stem for p in (REPO / "kernels_pyx").glob("*.pyx"))
    assert device["compiled_modules"] == pyx, (
        f"kernels_pyx has {pyx} but arm64 imports compiled {device['compiled_modules']}"
    )
    # Digests cover the compression and routing kernels; other compiled
    # modules are only checked to build and import on arm64.
    assert {"compress/compiled", "sssp/compiled"} <= set(device["backends"])
    problems = compare_digests(host, device)
    n_cases = sum(len(c) for c in host["backends"].values())
    assert not problems, f"{len(problems)} of {n_cases} digests differ:\n" + "\n".join(
        problems[:30]
    )
    # Errors are digests too; make sure the comparison compared real outputs.
    errors = [
        (b, c)
        for b, cases in device["backends"].items()
        for c, d in cases.items()
        if d.startswith("error")
    ]
    assert not errors, f"kernel cases that raised on both machines: {errors[:10]}"


def _rss_kb(pid: int) -> int | None:
    """VmRSS of the emulated agent: the descendant of ``pid`` that runs
    ``python -m agent run`` (under binfmt its command line starts with the
    qemu interpreter, whose own few MB are included: an upper bound)."""
    for child in Path("/proc").iterdir():
        if not child.name.isdigit():
            continue
        try:
            cmd = (child / "cmdline").read_bytes().split(b"\0")
            status = (child / "status").read_text()
        except OSError:
            continue
        if b"agent" in cmd and b"run" in cmd and b"-m" in cmd:
            ppid = int(status.split("PPid:")[1].split()[0])
            # unshare, chroot, env and sh all exec: the agent is usually the
            # process started as ``pid`` itself.
            mine = int(child.name) == pid or _descends(ppid, pid)
            if mine and "VmRSS:" in status:
                return int(status.split("VmRSS:")[1].split()[0])
    return None


def _descends(pid: int, ancestor: int) -> bool:
    for _ in range(10):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(status.split("PPid:")[1].split()[0])
    return False


@pytest.mark.timeout(900)
def test_arm64_agent_completes_rounds_against_the_host_daemon(arm64, tmp_path):
    """The agent inside the root filesystem, the daemon on the host, over TCP
    on loopback with CURVE; per-round time and resident memory reported."""
    rounds = 4
    ids = ["pi-0"]
    # Keys and state inside the root filesystem, so the agent can read them.
    inside = f"/opt/orbitfl/run-{os.getpid()}"
    run_dir = arm64.host_path(inside)
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = Keys(run_dir / "keys", ids)
    port = 46000 + os.getpid() % 1000
    state = tmp_path / "ground-state"
    _, host_cfg = one_agent_configs(
        tmp_path / "ground.toml",
        run_dir / "pi-0.toml",
        agent_id="pi-0",
        bind=f"tcp://127.0.0.1:{port}",
        endpoint=f"tcp://127.0.0.1:{port}",
        ground_state=state,
        agent_state=run_dir / "state",
        keys=keys,
        rounds=rounds,
        extra=EXTRA,
    )
    # The test trainer is not part of the sdist: copy it in.
    pkg = run_dir / "py" / "hil_tests"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in ("__init__.py", "_trainer.py"):
        shutil.copy(REPO / "hil_tests" / name, pkg / name)
    # The config names host paths; inside they live under /opt/orbitfl/run-*.
    host_cfg.write_text(host_cfg.read_text().replace(str(run_dir), inside))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ground = Proc(
        "ground",
        [
            sys.executable,
            "-m",
            "ground",
            "serve",
            "--config",
            str(tmp_path / "ground.toml"),
        ],
        tmp_path / "ground.log",
        env=env,
    ).start()
    try:
        t0 = time.monotonic()
        agent = Proc(
            "pi-0",
            arm64.rootfs_argv(
                [
                    arm64.VENV_PYTHON,
                    "-m",
                    "agent",
                    "run",
                    "--config",
                    f"{inside}/pi-0.toml",
                ],
                env={
                    "PYTHONPATH": f"{arm64.SRC}:{inside}/py",
                    "ORBITFL_KERNELS": "compiled",
                },
            ),
            tmp_path / "pi-0.log",
        ).start()
        rss_kb = []
        while agent.running() and time.monotonic() - t0 < 600:
            if (kb := _rss_kb(agent.pid)) is not None:
                rss_kb.append(kb)
            time.sleep(0.5)
        assert not agent.running(), "the arm64 agent did not finish in 600 s"
        wall_s = time.monotonic() - t0
        log = agent.log_text()
        assert agent.popen.returncode == 0, log[-3000:]
    finally:
        agent.stop() if "agent" in locals() else None
        ground.stop()
    outcome = account(
        {"pi-0": log}, {"pi-0": run_dir / "state" / "outbox.sqlite"}, state,
        {"pi-0": (0, rounds + 1)}, daemon_log=ground.log_text(),
    )  # fmt: skip
    acc = outcome.accounting
    assert len(acc.produced) == rounds, sorted(acc.produced)
    assert acc.problems() == [] and outcome.model_problems == []
    trained = [line for line in log.splitlines() if "trained round" in line]
    assert len(trained) == rounds
    round_s = per_round_s(log)
    peak_mb = max(rss_kb) / 1024 if rss_kb else float("nan")
    summary = RunSummary("arm64 agent vs host daemon (qemu)", accounting=acc)
    summary.notes = {
        "rounds": rounds,
        "wall_s": round(wall_s, 1),
        "per_round_s": round(round_s, 2),
        "agent_peak_rss_mb": round(peak_mb, 1),
    }
    summary.record()
    (WORK_DIR / "arm64-agent.json").write_text(json.dumps(summary.notes))
    print(
        f"\narm64 agent (qemu): {rounds} rounds in {wall_s:.1f} s wall, "
        f"{round_s:.2f} s per round after the first, peak RSS {peak_mb:.1f} MB"
    )
    assert rss_kb, "could not read the agent's resident memory from /proc"
