"""What the emulated and the real-device tests share: digests, the sdist,
the pinned requirements, the host address a device reaches, round times."""

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import tarfile
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIGESTS = "hil_tests/arm64/kernel_digests.py"
# Pinned to the host's versions: the bit-identity comparison needs the same
# NumPy on both sides.  Cython and setuptools build the kernels on the device.
DEVICE_REQUIREMENTS = ("numpy", "msgpack", "pyzmq", "sgp4", "Cython", "setuptools",
                       "wheel")  # fmt: skip
SDIST_SOURCES = ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "agent",
                 "ground", "kernels_pyx")  # fmt: skip


def host_digests() -> dict:
    out = subprocess.run(
        [sys.executable, str(REPO / DIGESTS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout)


def compare_digests(host: dict, device: dict) -> list[str]:
    """One sentence per kernel case whose output differs between machines."""
    problems = []
    for backend, cases in host["backends"].items():
        other = device["backends"].get(backend)
        if other is None:
            problems.append(f"backend {backend} exists on x86-64 but not on arm64")
            continue
        for case, digest in cases.items():
            if other.get(case) != digest:
                problems.append(
                    f"{backend} {case}: x86-64 {digest[:16]} != arm64 "
                    f"{str(other.get(case))[:16]}"
                )
    return problems


def build_sdist(dest: Path) -> Path:
    """The sdist a device builds from, made from a copy of the sources so
    that the build leaves nothing (egg-info, generated C) in the work tree."""
    stage = dest / "sdist-src"
    stage.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(
        ["tar", "-cf", "-", "--exclude=*.so", "--exclude=*.c",
         "--exclude=__pycache__", "--exclude=*.egg-info", *SDIST_SOURCES],
        cwd=REPO, capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    subprocess.run(["tar", "-xf", "-", "-C", str(stage)], input=tar.stdout, check=True)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dest)],
        cwd=stage,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (sdist,) = dest.glob("orbitfl-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    if not any(n.endswith(".pyx") for n in names):
        raise RuntimeError(f"{sdist} has no .pyx sources; check MANIFEST.in")
    return sdist


def pinned_requirements() -> list[str]:
    pins = []
    for name in DEVICE_REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def host_addr_for(device_host: str) -> str:
    """The address a device uses to reach this host's daemon.

    ``HIL_HOST_ADDR`` when set (a NAT or a second interface); otherwise the
    source address the host's routing picks toward the device, which is the
    address the device sees the host at on a flat network.
    """
    addr = os.environ.get("HIL_HOST_ADDR", "").strip()
    if addr:
        return addr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(device_host), 9))  # no packet is sent
        return s.getsockname()[0]


def per_round_s(agent_log: str) -> float:
    """Mean seconds between the agent's "trained round" lines (log stamps)."""
    stamps = [
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in agent_log.splitlines()
        if "trained round" in line
    ]
    if len(stamps) < 2:
        return float("nan")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)
