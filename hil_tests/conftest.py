"""Fixtures of the hardware-in-the-loop bench, and the summary table."""

import os
import shutil
import sys
from pathlib import Path

import pytest

from hil_tests import _ledger
from hil_tests._netns import LinkSpec, NetnsLab, unavailable_reason

REPO = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session) -> None:
    # One table per session: forget the runs of an earlier session.
    if _ledger.SUMMARY_FILE.exists():
        _ledger.SUMMARY_FILE.unlink()


def pytest_terminal_summary(terminalreporter) -> None:
    rows = _ledger.load()
    if rows:
        terminalreporter.section("hardware-in-the-loop summary")
        terminalreporter.write_line(_ledger.format_table(rows))


@pytest.fixture(scope="session")
def netns_available() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def netns_lab(netns_available):
    """A factory: ``netns_lab(n_agents, LinkSpec(...))`` -> a NetnsLab, torn
    down after the test."""
    labs: list[NetnsLab] = []

    def make(n_agents: int, link: LinkSpec | None = None) -> NetnsLab:
        lab = NetnsLab(
            n_agents, link or LinkSpec(), tag=f"{os.getpid() % 10000}{len(labs)}"
        )
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in labs:
        lab.teardown()


@pytest.fixture(scope="session")
def py_env() -> dict[str, str]:
    """Environment for the project's Python in a subprocess (any namespace)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def ip_tool() -> str:
    path = shutil.which("ip")
    if path is None:
        pytest.skip("`ip` not found; install iproute2")
    return path
