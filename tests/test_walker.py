"""Walker constellations: valid TLEs that propagate with the requested elements."""

from datetime import UTC, datetime

import numpy as np
import pytest
from sgp4.api import Satrec

from agent._orbit import propagate_teme
from agent._tle import TLEError, load_elements, validate_tle, write_tles
from agent._walker import walker_tles

EPOCH = datetime(2025, 6, 1, 6, 0, tzinfo=UTC)
WGS84_A_KM = 6378.137


def _sats(tles):
    return [Satrec.twoline2rv(l1, l2) for _, l1, l2 in tles]


def _state_at_epoch(sats, minutes=0.0):
    jd = np.array([sats[0].jdsatepoch])
    fr = np.array([sats[0].jdsatepochF + minutes / 1440.0])
    r, v, status = propagate_teme(sats, jd, fr)
    assert not status.any()
    return r[:, 0], v[:, 0]


@pytest.mark.parametrize("pattern", ["delta", "star"])
def test_walker_tles_are_valid_and_have_the_requested_elements(pattern):
    tles = walker_tles(6, 8, 2, 550.0, 53.0, EPOCH, pattern=pattern, name_prefix="w")
    assert len(tles) == 48
    assert len({l1[2:7] for _, l1, _ in tles}) == 48
    assert tles[0][0] == "w-00-00" and tles[9][0] == "w-01-01"
    for _, l1, l2 in tles:
        assert validate_tle(l1, l2) == []
    sats = _sats(tles)
    span = 360.0 if pattern == "delta" else 180.0
    for index, sat in enumerate(sats):
        plane, slot = divmod(index, 8)
        assert np.degrees(sat.inclo) == pytest.approx(53.0)
        assert np.degrees(sat.nodeo) == pytest.approx(plane * span / 6, abs=1e-4)
        expected_m = (slot * 45.0 + plane * 2 * 360.0 / 48) % 360.0
        assert np.degrees(sat.mo) == pytest.approx(expected_m, abs=1e-4)
        assert sat.ecco == 0.0
        assert sat.a * sat.radiusearthkm - sat.radiusearthkm == pytest.approx(
            550.0, abs=0.01
        )
        assert sat.jdsatepoch + sat.jdsatepochF == pytest.approx(2460827.75, abs=1e-8)


def test_propagated_orbits_have_the_requested_shape():
    tles = walker_tles(4, 3, 1, 1200.0, 86.4, EPOCH, pattern="star")
    sats = _sats(tles)
    # one full orbit, sampled: mean geocentric altitude and orbit plane
    period_min = 2 * np.pi / sats[0].no_kozai
    jd = np.full(200, sats[0].jdsatepoch)
    fr = sats[0].jdsatepochF + np.linspace(0, period_min, 200, endpoint=False) / 1440
    r, v, status = propagate_teme(sats, jd, fr)
    assert not status.any()
    radius = np.linalg.norm(r, axis=2)
    assert np.allclose(radius.mean(axis=1) - WGS84_A_KM, 1200.0, atol=5.0)
    assert np.ptp(radius, axis=1).max() < 30.0  # circular up to J2 terms
    h = np.cross(r[:, 0], v[:, 0])
    inclination = np.degrees(np.arccos(h[:, 2] / np.linalg.norm(h, axis=1)))
    assert np.allclose(inclination, 86.4, atol=0.1)
    raan = np.degrees(np.arctan2(h[:, 0], -h[:, 1])) % 360.0
    expected = np.repeat(np.arange(4) * 45.0, 3)
    assert np.allclose((raan - expected + 180) % 360 - 180, 0.0, atol=0.1)


def test_phasing_offsets_neighbouring_planes():
    planes, per_plane, phasing = 5, 4, 3
    tles = walker_tles(planes, per_plane, phasing, 700.0, 60.0, EPOCH)
    r, v = _state_at_epoch(_sats(tles))
    # argument of latitude (angle from the ascending node in the orbit plane)
    h = np.cross(r, v)
    node = np.cross([0.0, 0.0, 1.0], h)
    node /= np.linalg.norm(node, axis=1)[:, None]
    cos_u = np.einsum("ij,ij->i", node, r) / np.linalg.norm(r, axis=1)
    u = np.degrees(np.arccos(np.clip(cos_u, -1, 1)))
    u = np.where(r[:, 2] < 0, 360.0 - u, u)
    first_of_plane = u[::per_plane]
    step = (np.diff(first_of_plane) + 180) % 360 - 180
    assert np.allclose(step, phasing * 360.0 / (planes * per_plane), atol=0.2)


def test_invalid_constellations_name_every_problem():
    with pytest.raises(ValueError) as info:
        walker_tles(0, 4, 5, 80.0, 200.0, datetime(2025, 1, 1), pattern="ring")
    message = str(info.value)
    for fragment in ("planes=0", "altitude_km=80.0", "inclination_deg=200.0",
                     "pattern='ring'", "has no time zone"):  # fmt: skip
        assert fragment in message
    with pytest.raises(ValueError, match="catalog numbers 99990..100009"):
        walker_tles(4, 5, 0, 500.0, 50.0, EPOCH, first_catalog_number=99990)
    with pytest.raises(ValueError, match="epoch year 2070"):
        walker_tles(1, 1, 0, 500.0, 50.0, datetime(2070, 1, 1, tzinfo=UTC))


def test_a_constellation_written_to_a_file_loads_back(tmp_path):
    tles = walker_tles(3, 4, 1, 800.0, 70.0, EPOCH, pattern="star")
    path = tmp_path / "walker.tle"
    write_tles(path, tles)
    load = load_elements(path)
    assert load.problems == []
    assert [(e.name, e.line1, e.line2) for e in load.entries] == tles
    bad = [(tles[0][0], tles[0][1][:68] + "0", tles[0][2])]
    if tles[0][1][68] == "0":
        bad = [(tles[0][0], tles[0][1][:68] + "1", tles[0][2])]
    with pytest.raises(TLEError, match="checksum"):
        write_tles(tmp_path / "bad.tle", bad)
    assert not (tmp_path / "bad.tle").exists()
