"""Walker delta and star constellations, written out as two-line element sets.

A Walker constellation ``i: T/P/F`` puts ``T = P * S`` satellites on circular
orbits of one altitude and inclination in ``P`` equally spaced planes of ``S``
satellites each.  Plane ``p`` has right ascension of the ascending node
``p * span / P`` (``span`` is 360 deg for a delta pattern, 180 deg for a star
pattern, whose planes meet over the poles), and satellite ``s`` of plane ``p``
has mean anomaly ``s * 360 / S + p * F * 360 / T`` (J. G. Walker, "Satellite
constellations", J. British Interplanetary Society 37, 1984).
"""

import math
from datetime import UTC, datetime

from sgp4.api import WGS72, Satrec

from agent._tle import epoch_days_since_1949, format_tle

_PATTERN_SPAN_DEG = {"delta": 360.0, "star": 180.0}

# WGS72, the gravity model TLE mean elements are defined in.
_WGS72_MU_KM3_S2 = 398600.8
_WGS72_RADIUS_KM = 6378.135
_MAX_CATALOG_NUMBER = 99999


def walker_tles(
    planes: int,
    sats_per_plane: int,
    phasing: int,
    altitude_km: float,
    inclination_deg: float,
    epoch: datetime,
    pattern: str = "delta",
    name_prefix: str = "sat",
    first_catalog_number: int = 90001,
) -> list[tuple[str, str, str]]:
    """Return ``(name, line1, line2)`` for every satellite of a Walker pattern.

    Satellites are ordered plane by plane; the name is
    ``f"{name_prefix}-{plane:02d}-{slot:02d}"`` (both zero-based) and catalog
    numbers count up from ``first_catalog_number``.  Orbits are circular with
    zero drag terms.  ``altitude_km`` is the SGP4 (Brouwer) mean semi-major
    axis minus the equatorial radius: the mean motion written in the TLE is
    solved for so that ``Satrec.a`` of the parsed line gives that altitude.
    ``epoch`` must be a timezone-aware UTC datetime in 1957-2056 (the range
    two-digit TLE years can express).
    """
    problems = []
    for label, value in (
        ("planes", planes),
        ("sats_per_plane", sats_per_plane),
    ):
        if not isinstance(value, int) or value < 1:
            problems.append(f"{label}={value!r} must be an integer >= 1")
    if not isinstance(phasing, int) or not (
        isinstance(planes, int) and 0 <= phasing < max(planes, 1)
    ):
        problems.append(f"phasing={phasing!r} must be an integer in [0, planes-1]")
    if not (isinstance(altitude_km, int | float) and 150.0 <= altitude_km <= 50000):
        problems.append(f"altitude_km={altitude_km!r} must be in [150, 50000] km")
    if not (isinstance(inclination_deg, int | float) and 0 <= inclination_deg <= 180):
        problems.append(f"inclination_deg={inclination_deg!r} must be in [0, 180]")
    if pattern not in _PATTERN_SPAN_DEG:
        problems.append(f"pattern={pattern!r} must be 'delta' or 'star'")
    if epoch.tzinfo is None:
        problems.append(
            f"epoch={epoch.isoformat()} has no time zone; pass an aware UTC datetime"
        )
    elif not 1957 <= epoch.astimezone(UTC).year <= 2056:
        problems.append(f"epoch year {epoch.year} is outside 1957-2056")
    if not problems:
        total = planes * sats_per_plane
        last = first_catalog_number + total - 1
        if first_catalog_number < 1 or last > _MAX_CATALOG_NUMBER:
            problems.append(
                f"catalog numbers {first_catalog_number}..{last} do not fit in "
                f"1..{_MAX_CATALOG_NUMBER}; lower first_catalog_number"
            )
    if problems:
        raise ValueError("invalid Walker constellation: " + "; ".join(problems))

    epoch = epoch.astimezone(UTC)
    total = planes * sats_per_plane
    span_deg = _PATTERN_SPAN_DEG[pattern]
    mean_motion_rev_day = _kozai_mean_motion_rev_day(
        altitude_km, math.radians(inclination_deg), epoch
    )
    result = []
    for p in range(planes):
        raan_deg = p * span_deg / planes
        for s in range(sats_per_plane):
            mean_anomaly_deg = (
                s * 360.0 / sats_per_plane + p * phasing * 360.0 / total
            ) % 360.0
            index = p * sats_per_plane + s
            line1, line2 = format_tle(
                catalog_number=first_catalog_number + index,
                epoch=epoch,
                inclination_deg=inclination_deg,
                raan_deg=raan_deg,
                eccentricity=0.0,
                arg_perigee_deg=0.0,
                mean_anomaly_deg=mean_anomaly_deg,
                mean_motion_rev_day=mean_motion_rev_day,
            )
            result.append((f"{name_prefix}-{p:02d}-{s:02d}", line1, line2))
    return result


def _kozai_mean_motion_rev_day(
    altitude_km: float, inclination_rad: float, epoch: datetime
) -> float:
    """Solve for the TLE (Kozai) mean motion whose SGP4 mean axis gives the altitude.

    SGP4 turns the Kozai mean motion of a TLE into a Brouwer mean motion with a
    J2 correction that depends on inclination (Hoots & Roehrich, Spacetrack
    Report No. 3, 1980), so Kepler's third law alone is off by a few km.  A
    few fixed-point steps through ``sgp4init`` remove that.
    """
    target_er = (_WGS72_RADIUS_KM + altitude_km) / _WGS72_RADIUS_KM
    a_km = _WGS72_RADIUS_KM + altitude_km
    no_kozai = math.sqrt(_WGS72_MU_KM3_S2 / a_km**3) * 60.0  # rad/min
    epoch_days = epoch_days_since_1949(epoch)
    sat = Satrec()
    for _ in range(4):
        sat.sgp4init(
            WGS72, "i", 1, epoch_days, 0.0, 0.0, 0.0, 0.0, 0.0,
            inclination_rad, 0.0, no_kozai, 0.0,
        )  # fmt: skip
        no_kozai *= (sat.a / target_er) ** 1.5
    return no_kozai * 1440.0 / (2.0 * math.pi)
