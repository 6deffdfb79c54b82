"""Opt-in atmospheric refraction: Bennett's formula, checked against skyfield.

skyfield's ``altaz(temperature_C=..., pressure_mbar=...)`` gives the apparent
altitude independently of our code (its own frames and its own iteration of
the refraction formula); at each refracted AOS/LOS it must equal the mask.
"""

from datetime import timedelta

import numpy as np
import pytest

from agent._contacts import find_windows
from agent._geo import Position
from agent._stations import (
    GroundStation,
    apparent_elevation_deg,
    refraction_deg,
)
from agent._tle import load_elements

skyfield_api = pytest.importorskip("skyfield.api")
earthlib = pytest.importorskip("skyfield.earthlib")
TS = skyfield_api.load.timescale(builtin=True)

# our frames agree with skyfield's to ~0.004 deg in LEO (tests/test_passes.py)
APPARENT_TOLERANCE_DEG = 0.02
T_C, P_MBAR = 10.0, 1010.0


def _iss(tle_dir):
    load = load_elements(tle_dir / "stations_2024-11.txt")
    iss = next(e for e in load.entries if "ZARYA" in e.name)
    jd = iss.satrec.jdsatepoch + iss.satrec.jdsatepochF
    epoch = TS.tt_jd(jd).utc_datetime().replace(microsecond=0)
    return iss, epoch


def _station(min_el, refraction, **kw):
    return GroundStation(
        f"KSC-{min_el}-{refraction}",
        Position(28.5729, -80.6490, 0.0),
        100.0,
        200.0,
        min_elevation_deg=min_el,
        refraction=refraction,
        **kw,
    )


def _apparent_deg(entry, station, times):
    sat = skyfield_api.EarthSatellite(entry.line1, entry.line2, entry.name, TS)
    p = station.position
    topos = skyfield_api.wgs84.latlon(p.lat_deg, p.lon_deg, elevation_m=p.alt_km * 1e3)
    alt, az, _ = (
        (sat - topos)
        .at(TS.from_datetimes(list(times)))
        .altaz(temperature_C=T_C, pressure_mbar=P_MBAR)
    )
    return alt.degrees, az.degrees


def test_bennett_refraction_matches_the_published_and_skyfield_values():
    # Bennett (1982): 34.5 arcmin at the apparent horizon, ~10 arcmin at
    # 5 deg, ~1 arcmin at 45 deg; scaled by 0.28 * 1010 / 283 = 0.9993
    h = np.array([-1.0, 0.0, 5.0, 10.0, 45.0, 89.0])
    ours = refraction_deg(h)
    assert ours[1] * 60 == pytest.approx(34.48 * 0.9993, abs=0.05)
    assert ours[2] * 60 == pytest.approx(9.9, abs=0.2)
    assert ours[4] * 60 == pytest.approx(1.0, abs=0.05)
    np.testing.assert_allclose(
        ours, earthlib.refraction(h, T_C, P_MBAR), rtol=1e-4, atol=1e-9
    )
    assert refraction_deg(np.array([-1.5, 89.95])).tolist() == [0.0, 0.0]
    true = np.linspace(-0.9, 89.0, 200)
    np.testing.assert_allclose(
        apparent_elevation_deg(true),
        earthlib.refract(true, T_C, P_MBAR),
        atol=1e-4,
    )


@pytest.mark.parametrize("min_el", [0.0, 5.0])
def test_refraction_widens_every_leo_pass_by_a_plausible_amount(tle_dir, min_el):
    iss, t0 = _iss(tle_dir)
    geo, app = _station(min_el, False), _station(min_el, True)
    result = find_windows([(iss.name, iss.satrec)], [geo, app], t0, 24.0)
    plain = [w for w in result.windows if w.station is geo]
    refr = [w for w in result.windows if w.station is app]
    assert len(plain) == len(refr) > 0
    # R is 0.58 deg at 0 deg and 0.16 deg at 5 deg; the ISS rises at most
    # ~0.03-0.06 deg/s low in the sky: 9-18 s and 2-4 s measured
    lo_s, hi_s = (5.0, 40.0) if min_el == 0.0 else (1.0, 10.0)
    for p, r in zip(plain, refr, strict=True):
        earlier = (p.start_time - r.start_time).total_seconds()
        later = (r.end_time - p.end_time).total_seconds()
        if not p.start_clipped:
            assert lo_s < earlier < hi_s, (p, r)
        if not p.end_clipped:
            assert lo_s < later < hi_s, (p, r)
        assert abs((r.tca_time - p.tca_time).total_seconds()) < 1.0
        assert r.max_elevation_deg > p.max_elevation_deg


@pytest.mark.parametrize("min_el", [0.0, 5.0])
def test_refracted_crossings_meet_the_mask_in_skyfield_apparent_altitude(
    tle_dir, min_el
):
    iss, t0 = _iss(tle_dir)
    station = _station(min_el, True)
    result = find_windows([(iss.name, iss.satrec)], [station], t0, 24.0)
    times, tcas, peaks = [], [], []
    for w in result.windows:
        times += [t for t, c in ((w.start_time, w.start_clipped),
                                 (w.end_time, w.end_clipped)) if not c]  # fmt: skip
        tcas.append(w.tca_time)
        peaks.append(w.max_elevation_deg)
    assert len(times) >= 4
    alt, _ = _apparent_deg(iss, station, times)
    np.testing.assert_allclose(alt, min_el, atol=APPARENT_TOLERANCE_DEG)
    # and the geometric elevation there is below the mask by about R
    sat = skyfield_api.EarthSatellite(iss.line1, iss.line2, iss.name, TS)
    topos = skyfield_api.wgs84.latlon(28.5729, -80.6490)
    geo = (sat - topos).at(TS.from_datetimes(times)).altaz()[0].degrees
    np.testing.assert_allclose(
        min_el - geo, refraction_deg(min_el), atol=APPARENT_TOLERANCE_DEG
    )
    # the reported maximum elevation is apparent too
    alt_peak, _ = _apparent_deg(iss, station, tcas)
    np.testing.assert_allclose(peaks, alt_peak, atol=0.05)


def test_refraction_applies_to_an_azimuth_horizon_mask(tle_dir):
    iss, t0 = _iss(tle_dir)
    mask = ((0.0, 12.0), (179.0, 12.0), (181.0, 2.0), (359.0, 2.0))
    station = _station(0.0, True, horizon_mask=mask)
    result = find_windows([(iss.name, iss.satrec)], [station], t0, 24.0)
    times = [t for w in result.windows
             for t, c in ((w.start_time, w.start_clipped), (w.end_time, w.end_clipped))
             if not c]  # fmt: skip
    assert len(times) >= 4
    alt, az = _apparent_deg(iss, station, times)
    np.testing.assert_allclose(alt, station.mask_deg(az), atol=APPARENT_TOLERANCE_DEG)


def test_windows_without_refraction_do_not_move(tle_dir):
    iss, t0 = _iss(tle_dir)
    default = GroundStation("a", Position(28.5729, -80.6490, 0.0), 100.0, 200.0)
    explicit = _station(5.0, False, temperature_c=-30.0, pressure_mbar=700.0)
    result = find_windows([(iss.name, iss.satrec)], [default, explicit], t0, 12.0)
    a = [w for w in result.windows if w.station is default]
    b = [w for w in result.windows if w.station is explicit]
    assert [(w.start_time, w.end_time, w.max_elevation_deg) for w in a] == [
        (w.start_time, w.end_time, w.max_elevation_deg) for w in b
    ]


def test_lower_pressure_refracts_less(tle_dir):
    iss, t0 = _iss(tle_dir)
    sea = _station(0.0, True)
    high = _station(0.0, True, pressure_mbar=700.0)
    result = find_windows([(iss.name, iss.satrec)], [sea, high], t0, 12.0)
    a = [w for w in result.windows if w.station is sea and not w.start_clipped]
    b = [w for w in result.windows if w.station is high and not w.start_clipped]
    assert a and len(a) == len(b)
    for wa, wb in zip(a, b, strict=True):
        assert wa.start_time < wb.start_time < wa.start_time + timedelta(minutes=1)


@pytest.mark.parametrize(
    ("option", "value"),
    [("refraction", "yes"), ("temperature_c", 200.0), ("pressure_mbar", -1.0)],
)
def test_bad_refraction_options_are_named(option, value):
    with pytest.raises(ValueError, match=option) as info:
        GroundStation("x", Position(0.0, 0.0, 0.0), 1.0, 1.0, **{option: value})
    assert repr(value) in str(info.value)
