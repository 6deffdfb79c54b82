"""The deployment kit: example configs, systemd units, the install script.

The install script runs for real, on this machine, into a throw-away prefix
(``--no-systemd --no-apt``): it makes the virtual environment, builds and
installs orbitfl with its kernels, makes the agent's key pair and writes a
config that the agent's own loader accepts.
"""

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent._config import load_agent_config
from agent._keys import load_secret, make_keypair
from ground._config import load_ground_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "Restart": "on-failure",
}


def test_example_configs_are_accepted_by_the_loaders():
    agent = load_agent_config(DEPLOY / "agent.toml")
    assert agent.id == "sat-001" and agent.curve
    assert agent.outbox_path == Path("/var/lib/orbitfl/outbox.sqlite")
    ground = load_ground_config(DEPLOY / "ground.toml")
    assert ground.curve and ground.allowlist_dir == Path("/etc/orbitfl/allowlist")


@pytest.mark.parametrize("role", ["agent", "ground"])
def test_systemd_units_restart_on_failure_and_are_hardened(role):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(DEPLOY / "systemd" / f"orbitfl-{role}.service")
    service = unit["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{role} unit: {key}={service.get(key)}"
    command = "run" if role == "agent" else "serve"
    assert service["ExecStart"] == (
        f"/opt/orbitfl/venv/bin/python -m {role} {command} "
        f"--config /etc/orbitfl/{role}.toml"
    )
    assert service["User"] == "orbitfl"
    assert service["CapabilityBoundingSet"] == ""
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    if shutil.which("systemd-analyze"):
        path = DEPLOY / "systemd" / f"orbitfl-{role}.service"
        proc = subprocess.run(
            ["systemd-analyze", "verify", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        # verify complains about the missing /opt/orbitfl on a build machine;
        # anything else is a mistake in the unit.
        problems = [
            line for line in proc.stderr.splitlines()
            if "/opt/orbitfl" not in line and line.strip()
        ]  # fmt: skip
        assert not problems, problems


def test_install_script_refuses_an_agent_without_its_required_options(tmp_path):
    proc = subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), "agent", "--no-apt", "--no-systemd",
         "--prefix", str(tmp_path / "opt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    for option in ("--id", "--endpoint", "--server-key"):
        assert option in proc.stderr, proc.stderr
    assert not (tmp_path / "opt").exists(), "it started installing anyway"


@pytest.mark.timeout(900)
def test_install_script_installs_a_working_agent_into_a_fresh_prefix(tmp_path):
    ground_keys = tmp_path / "ground-keys"
    ground_public, _ = make_keypair(ground_keys, "ground")
    prefix, etc, state = tmp_path / "opt", tmp_path / "etc", tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A copy of the source, as on a device: pip builds in the source tree,
    # and the shared work tree must not get build products.
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".work", "*.so", "*.c", "__pycache__", "build", "*.egg-info",
            ".venv*", "tests", "bench", "hil_tests",
        ),
    )  # fmt: skip
    proc = subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), "agent", "--no-apt", "--no-systemd",
         "--python", sys.executable, "--prefix", str(prefix), "--etc", str(etc),
         "--state", str(state), "--id", "pi-7", "--endpoint", "tcp://192.0.2.10:5555",
         "--server-key", str(ground_public), "--source", str(src), "--user", "root"],
        capture_output=True, text=True, env=env, timeout=840,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiled kernels active: True" in proc.stdout, proc.stdout

    config = load_agent_config(etc / "agent.toml")
    assert config.id == "pi-7"
    assert config.endpoint == "tcp://192.0.2.10:5555"
    assert config.secret_key == etc / "keys" / "pi-7.key_secret"
    assert config.state_dir == state
    load_secret(config.secret_key)  # a real key pair
    assert (etc / "keys" / "ground.key").read_bytes() == ground_public.read_bytes()
    assert oct((etc / "keys" / "pi-7.key_secret").stat().st_mode & 0o777) in (
        "0o600",
        "0o640",
    )
    # The installed package runs from outside the source tree.
    out = subprocess.run(
        [str(prefix / "venv" / "bin" / "python"), "-m", "agent", "--help"],
        capture_output=True, text=True, cwd="/", env=env,
    )  # fmt: skip
    assert out.returncode == 0 and "run" in out.stdout, out.stderr

    # Running it again keeps the key and the config.
    key_before = (etc / "keys" / "pi-7.key_secret").read_bytes()
    again = subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), "agent", "--no-apt", "--no-systemd",
         "--python", sys.executable, "--prefix", str(prefix), "--etc", str(etc),
         "--state", str(state), "--id", "pi-7", "--endpoint", "tcp://192.0.2.10:5555",
         "--server-key", str(ground_public), "--source", str(src), "--user", "root"],
        capture_output=True, text=True, env=env, timeout=840,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "kept the existing" in again.stdout
    assert (etc / "keys" / "pi-7.key_secret").read_bytes() == key_before
