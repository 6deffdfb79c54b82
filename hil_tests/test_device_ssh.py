"""The agent on an arm64 device reached over ssh: a real one, or a stand-in.

Real: ``HIL_TARGET=ssh://user@host[:port]``, a Raspberry Pi or a Jetson with
python3-venv, python3-dev and gcc, reachable by key-based ssh, that can
reach this host's daemon at ``HIL_HOST_ADDR`` (default: the host's source
address toward the device).  Stand-in, when ``HIL_TARGET`` is not set: the
arm64 root filesystem's own sshd under qemu-user (``hil_tests._sshd``), so
the same path runs over real ssh against an aarch64 userland.

The path is the one a team follows with a new board: scp the sdist, make a
virtual environment, compile the kernels with the device's gcc, compare
kernel digests with x86-64, then run the agent there against the daemon on
this host over TCP with CURVE and report its resident memory and its time
per round.  ``HIL_DEVICE_PIP_ARGS`` adds pip options on the device (an index
or a wheel directory); the stand-in installs offline from the root
filesystem's wheels.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from hil_tests import _device, _rootfs, _sshd
from hil_tests._faults import Proc
from hil_tests._ledger import WORK_DIR, RunSummary
from hil_tests._scenario import Keys, account, one_agent_configs

REMOTE_DIR = "orbitfl-hil"  # under the device user's home
EXTRA = 20_000  # float32 padding: an 80 kB update
ROUNDS = 4
RUN_TIMEOUT_S = 900.0
# Sampled on the device every half second while the agent runs.
RSS_LOOP = (
    'while kill -0 "$pid" 2>/dev/null; do '
    "sed -n 's/^VmRSS:[[:space:]]*\\([0-9]*\\).*/\\1/p' /proc/$pid/status "
    '>> "$R/run/rss_kb.txt" 2>/dev/null; sleep 0.5; done'
)


def _ssh(target, cmd: str, timeout_s: float = 600.0) -> str:
    proc = subprocess.run(
        target.ssh_argv(cmd), capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"on {target.url}: `{cmd[:300]}` exited {proc.returncode}:\n"
            f"{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}"
        )
    return proc.stdout


def _scp(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-2000:]}")  # fmt: skip


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """(target, kind, pip_args): a real device from HIL_TARGET, else the
    root filesystem's sshd."""
    try:
        target = _rootfs.SshTarget.from_env()
    except ValueError as exc:
        pytest.fail(str(exc))
    if target is not None:
        yield target, "real device", os.environ.get("HIL_DEVICE_PIP_ARGS", "")
        return
    reason = _sshd.unavailable_reason()
    if os.environ.get("HIL_LOCAL_SSHD", "1") == "0":
        reason = "HIL_LOCAL_SSHD=0"
    if reason:
        pytest.skip(
            "no device: set HIL_TARGET=ssh://user@host (a Raspberry Pi or Jetson "
            "with python3-venv, python3-dev and gcc, reachable by key-based ssh) "
            f"to run this suite on it; the local sshd stand-in is off: {reason}"
        )
    sshd = _sshd.LocalSshd(tmp_path_factory.mktemp("sshd"))
    target = sshd.start()
    try:
        yield target, "sshd in the arm64 rootfs (qemu)", _sshd.OFFLINE_PIP_ARGS
    finally:
        sshd.stop()


@pytest.fixture(scope="module")
def built(device, tmp_path_factory):
    """Copy the sdist, make a venv and compile the kernels on the device.

    Returns (target, kind, remote dir, source dir name)."""
    target, kind, pip_args = device
    sdist = _device.build_sdist(tmp_path_factory.mktemp("sdist"))
    home = _ssh(target, 'printf %s "$HOME"').strip()
    remote = f"{home}/{REMOTE_DIR}"
    src = sdist.name.removesuffix(".tar.gz")
    _ssh(target, f"rm -rf {remote} && mkdir -p {remote}/run")
    _scp(target.scp_argv(sdist, f"{remote}/"))
    pins = " ".join(shlex.quote(p) for p in _device.pinned_requirements())
    t0 = time.monotonic()
    _ssh(
        target,
        f"cd {remote} && tar xzf {sdist.name} && python3 -m venv venv && "
        f"venv/bin/pip install -q --disable-pip-version-check {pip_args} {pins} "
        f"&& cd {src} && ../venv/bin/python setup.py -q build_ext --inplace "
        f'-j "$(nproc)" && mkdir -p hil_tests/arm64',
        timeout_s=3000,
    )
    build_s = time.monotonic() - t0
    _scp(target.scp_argv(_device.REPO / _device.DIGESTS,
                         f"{remote}/{src}/hil_tests/arm64/"))  # fmt: skip
    print(f"\n{kind} ({target.url}): venv and kernels built in {build_s:.0f} s")
    return target, kind, remote, src


@pytest.mark.timeout(3600)
def test_device_over_ssh_builds_and_matches_x86_64_digests(built):
    target, kind, remote, src = built
    out = _ssh(target, f"cd {remote}/{src} && ../venv/bin/python {_device.DIGESTS}")
    device = json.loads(out)
    assert device["machine"] == "aarch64", f"{kind} says machine {device['machine']}"
    host = _device.host_digests()
    pyx = sorted(p.stem for p in (_device.REPO / "kernels_pyx").glob("*.pyx"))
    assert device["compiled_modules"] == pyx, (
        f"kernels_pyx has {pyx} but the device imports compiled "
        f"{device['compiled_modules']}"
    )
    problems = _device.compare_digests(host, device)
    n_cases = sum(len(c) for c in host["backends"].values())
    assert not problems, f"{len(problems)} of {n_cases} digests differ:\n" + "\n".join(
        problems[:30]
    )


@pytest.mark.timeout(3600)
def test_device_over_ssh_agent_completes_rounds_against_the_host_daemon(
    built, tmp_path
):
    target, kind, remote, src = built
    ids = ["dev-0"]
    host_addr = _device.host_addr_for(target.host)
    port = _sshd.free_port()
    local = tmp_path / "dev"  # what goes to the device, under host paths
    keys = Keys(local / "keys", ids)
    state = tmp_path / "ground-state"
    _, cfg = one_agent_configs(
        tmp_path / "ground.toml",
        local / "agent.toml",
        agent_id="dev-0",
        bind=f"tcp://0.0.0.0:{port}",
        endpoint=f"tcp://{host_addr}:{port}",
        ground_state=state,
        agent_state=local / "state",
        keys=keys,
        rounds=ROUNDS,
        extra=EXTRA,
    )
    cfg.write_text(cfg.read_text().replace(str(local), f"{remote}/run"))
    # The test trainer is not part of the sdist.
    pkg = local / "py" / "hil_tests"
    pkg.mkdir(parents=True)
    for name in ("__init__.py", "_trainer.py"):
        shutil.copy(_device.REPO / "hil_tests" / name, pkg / name)
    _ssh(target, f"rm -rf {remote}/run && mkdir -p {remote}/run")
    for item in ("keys", "py", "agent.toml"):
        _scp(target.scp_argv(local / item, f"{remote}/run/"))

    serve = [sys.executable, "-m", "ground", "serve", "--config",
             str(tmp_path / "ground.toml")]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(_device.REPO))
    ground = Proc("ground", serve, tmp_path / "ground.log", env=env).start()
    # A simple command sent to the background, so that $! is the agent itself
    # (a backgrounded `cd && ...` list would be a subshell, and its RSS).
    script = (
        f"R={remote}; cd $R/{src} || exit 1; "
        f"PYTHONPATH=$R/{src}:$R/run/py ORBITFL_KERNELS=compiled "
        "../venv/bin/python -m agent run --config $R/run/agent.toml "
        '> "$R/run/agent.log" 2>&1 & pid=$!; '
        # A watchdog on the device: a test timeout kills only the local ssh
        # client, and the agent must not outlive the test there.  Its streams
        # go to /dev/null, or its sleep would hold the ssh session open.
        f'(sleep {int(RUN_TIMEOUT_S) - 30}; kill "$pid") >/dev/null 2>&1 </dev/null '
        "& dog=$!; "
        f'{RSS_LOOP}; wait "$pid"; rc=$?; kill "$dog" 2>/dev/null; '
        'echo "agent_rc=$rc"'
    )
    t0 = time.monotonic()
    try:
        out = _ssh(target, script, timeout_s=RUN_TIMEOUT_S)
    finally:
        wall_s = time.monotonic() - t0
        ground.stop()
    log = _ssh(target, f"cat {remote}/run/agent.log")
    (tmp_path / "dev-0.log").write_text(log)
    rss_kb = [int(x) for x in _ssh(target, f"cat {remote}/run/rss_kb.txt").split()]
    assert "agent_rc=0" in out, f"the agent on {kind} failed:\n{log[-3000:]}"
    assert wall_s < RUN_TIMEOUT_S / 2, (
        f"ssh returned {wall_s:.0f} s after the start: something left on the "
        "device held the session open after the agent exited"
    )
    _scp(target.fetch_argv(f"{remote}/run/state", tmp_path / "dev-state"))
    outcome = account(
        {"dev-0": log}, {"dev-0": tmp_path / "dev-state" / "outbox.sqlite"}, state,
        {"dev-0": (0, ROUNDS + 1)}, daemon_log=ground.log_text(),
    )  # fmt: skip
    acc = outcome.accounting
    assert len(acc.produced) == ROUNDS, sorted(acc.produced)
    assert acc.problems() == [] and outcome.model_problems == []
    round_s = _device.per_round_s(log)
    peak_mb = max(rss_kb) / 1024 if rss_kb else float("nan")
    summary = RunSummary(f"agent over ssh: {kind}", accounting=acc)
    summary.notes = {
        "target": target.url,
        "host_addr": host_addr,
        "rounds": ROUNDS,
        "wall_s": round(wall_s, 1),
        "per_round_s": round(round_s, 2),
        "agent_peak_rss_mb": round(peak_mb, 1),
    }
    summary.record()
    (WORK_DIR / "ssh-agent.json").write_text(json.dumps(summary.notes))
    print(
        f"\nagent over ssh ({kind}, {target.url}, daemon at {host_addr}:{port}): "
        f"{ROUNDS} rounds in {wall_s:.1f} s wall, {round_s:.2f} s per round after "
        f"the first, peak RSS {peak_mb:.1f} MB"
    )
    assert rss_kb, "no resident memory sampled from /proc on the device"
