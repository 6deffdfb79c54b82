"""The orbit helpers: time conversion, TEME to ECEF, batch propagation, look angles."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sgp4.api import Satrec

from agent._geo import Position
from agent._orbit import (
    datetime_to_jd,
    gmst_rad,
    jd_to_datetime,
    look_angles,
    propagate_teme,
    station_frame,
    teme_to_ecef_km,
    teme_to_ecef_state_km,
)
from agent._tle import load_elements

sgp4lib = pytest.importorskip("skyfield.sgp4lib")


def test_split_julian_dates_round_trip_to_the_microsecond():
    for t in (
        datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1957, 10, 4, 19, 28, 34, tzinfo=UTC),
        datetime(2056, 12, 31, 12, 0, tzinfo=UTC),
    ):
        jd, fr = datetime_to_jd(t)
        assert jd == int(jd - 0.5) + 0.5 and 0 <= fr < 1
        assert jd_to_datetime(jd, fr) == t
    with pytest.raises(ValueError, match="has no time zone"):
        datetime_to_jd(datetime(2024, 1, 1))


def test_teme_to_ecef_matches_skyfield_teme_to_itrf():
    rng = np.random.default_rng(3)
    r = rng.normal(size=(50, 3)) * 7000.0
    v = rng.normal(size=(50, 3)) * 7.0
    t0 = datetime(2023, 7, 18, 5, 6, 7, tzinfo=UTC)
    times = [t0 + timedelta(minutes=37 * i) for i in range(50)]
    jd = np.array([datetime_to_jd(t)[0] for t in times])
    fr = np.array([datetime_to_jd(t)[1] for t in times])
    r_ecef, v_ecef = teme_to_ecef_state_km(r, v, jd, fr)
    assert np.array_equal(r_ecef, teme_to_ecef_km(r, jd, fr))
    # skyfield takes and gives velocity per day; ours is per second
    ref_r, ref_v = sgp4lib.TEME_to_ITRF(jd, r.T, v.T * 86400.0, fraction_ut1=fr)
    assert np.abs(r_ecef - ref_r.T).max() < 1e-6  # km
    assert np.abs(v_ecef - ref_v.T / 86400.0).max() < 1e-9  # km/s


def test_gmst_rate_is_one_sidereal_day():
    _, rate = gmst_rad(np.array([2460000.5]), np.array([0.25]))
    assert 2 * np.pi / rate == pytest.approx(86164.0905, abs=1e-3)


def test_batch_propagation_marks_a_decayed_satellite_with_nan(tle_dir):
    entries = load_elements(tle_dir / "starlink_2023-07-18.txt").entries
    decayed = next(e for e in entries if e.name == "STARLINK-5139")
    sats = [entries[0].satrec, decayed.satrec, entries[1].satrec]
    jd = np.full(4, 2460146.5)  # 2023-07-21, three days after the epochs
    fr = np.linspace(0.0, 0.5, 4)
    r, v, status = propagate_teme(sats, jd, fr)
    assert r.shape == (3, 4, 3) and v.shape == (3, 4, 3)
    assert status.tolist()[0] == 0 and status.tolist()[2] == 0
    assert status[1] != 0 and np.isnan(r[1]).all()
    assert np.isfinite(r[[0, 2]]).all()
    # the same numbers as one satellite at a time
    _, r_one, _ = entries[1].satrec.sgp4_array(jd, fr)
    assert np.array_equal(r[2], r_one)


def test_look_angles_of_a_point_straight_up_and_due_east():
    p = Position(45.0, 10.0, 0.2)
    site = p.ecef_km()
    enu = station_frame(site, p.lat_deg, p.lon_deg)
    up = site + 500.0 * enu[2]
    east = site + 1000.0 * enu[0] + 1.0 * enu[2]
    az, el, rng = look_angles(np.array([up, east]), site, enu)
    assert el[0] == pytest.approx(90.0)
    assert rng[0] == pytest.approx(500.0)
    assert az[1] == pytest.approx(90.0)
    assert el[1] == pytest.approx(np.degrees(np.arctan2(1.0, 1000.0)))


def test_satrec_from_sgp4_and_from_our_loader_agree(tle_dir):
    entry = load_elements(tle_dir / "noaa_2022-02.txt").entries[0]
    direct = Satrec.twoline2rv(entry.line1, entry.line2)
    assert direct.no_kozai == entry.satrec.no_kozai
    assert direct.jdsatepoch + direct.jdsatepochF == (
        entry.satrec.jdsatepoch + entry.satrec.jdsatepochF
    )


def test_ground_station_names_every_problem():
    from agent._stations import GroundStation

    with pytest.raises(ValueError) as info:
        GroundStation(
            "gs", Position(0.0, 0.0), -1.0, float("nan"), min_elevation_deg=95.0,
            horizon_mask=((10.0, 5.0), (370.0, 6.0), (20.0, 120.0)), antennas=0,
        )  # fmt: skip
    message = str(info.value)
    for fragment in (
        "uplink_mbps=-1.0", "downlink_mbps=nan", "min_elevation_deg=95.0",
        "antennas=0", "repeats an azimuth", "(20.0, 120.0)",
    ):  # fmt: skip
        assert fragment in message


@pytest.mark.parametrize("mask", [((0.0, "low"),), (5.0, 10.0), "north"])
def test_a_horizon_mask_that_is_not_number_pairs_is_named(mask):
    from agent._stations import GroundStation

    with pytest.raises(ValueError, match="horizon_mask=.* must be a sequence of"):
        GroundStation("gs", Position(0.0, 0.0), 1.0, 1.0, horizon_mask=mask)


def test_horizon_mask_interpolates_across_north():
    from agent._stations import GroundStation

    station = GroundStation(
        "gs", Position(10.0, 20.0), 1.0, 2.0, min_elevation_deg=5.0,
        horizon_mask=((350.0, 10.0), (10.0, 20.0), (180.0, 0.0)),
    )  # fmt: skip
    assert station.mask_deg(np.array([0.0, 360.0, 355.0]))[:2] == pytest.approx(
        [15.0, 15.0]
    )
    assert station.mask_deg(np.array([355.0]))[0] == pytest.approx(12.5)
    assert station.mask_slope(np.array([0.0]))[0] == pytest.approx(0.5)
    # below the 5 deg floor the mask is flat
    assert station.mask_deg(np.array([180.0]))[0] == 5.0
    assert station.mask_slope(np.array([180.0]))[0] == 0.0
    assert station.lowest_mask_deg == 5.0
