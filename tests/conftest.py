"""Shared fixtures: where the real TLE sets live, and the kernel backends."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_TLE_DIR = Path(
    os.environ.get("ORBITFL_TLE_DIR", REPO.parent / "shared" / "data" / "tle")
)


@pytest.fixture(scope="session")
def tle_dir() -> Path:
    """The directory of real public TLE sets; skips the test where it is absent."""
    if not SHARED_TLE_DIR.is_dir():
        pytest.skip(
            f"real TLE sets not found at {SHARED_TLE_DIR}; set ORBITFL_TLE_DIR "
            "to a directory holding the CelesTrak group files"
        )
    return SHARED_TLE_DIR
