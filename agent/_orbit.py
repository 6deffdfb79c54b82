"""Vectorised SGP4 propagation, TEME to Earth-fixed rotation, look angles.

Times inside the orbit code are split Julian dates ``(jd, fr)`` in UTC, as the
``sgp4`` package takes them: ``jd`` carries whole days (or whole days plus a
half) and ``fr`` the fraction, so sub-millisecond resolution survives.  UT1 is
taken equal to UTC: |UT1 - UTC| < 0.9 s turns the Earth by < 14 arcsec, a
shift of < 0.45 km at the surface, which moves a LEO horizon crossing by well
under 0.1 s.  Polar motion (< 0.5 arcsec) is ignored for the same reason.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
from sgp4.api import Satrec, SatrecArray

from agent._geo import DAY_S

# IAU 1982 GMST (Aoki et al. 1982, as used by Vallado's ``gstime`` and by
# skyfield's ``theta_GMST1982``).  The coefficients are seconds of time per
# Julian century; the rotation rate follows from their derivative.
_J2000_JD = 2451545.0
_JULIAN_CENTURY_DAYS = 36525.0
_GMST_S = (67310.54841, 8640184.812866, 0.093104, -6.2e-6)
TWO_PI = 2.0 * np.pi

# Error codes of the sgp4 package (``sgp4.api.SGP4_ERRORS``), kept here so a
# status can be explained without importing the message table.
SGP4_ERROR_TEXT = {
    1: "mean eccentricity is outside [0, 1)",
    2: "mean motion has fallen below zero",
    3: "perturbed eccentricity is outside [0, 1)",
    4: "semi-latus rectum is below zero",
    5: "orbit has decayed (radius below the Earth's surface)",
    6: "orbit has decayed",
}

_JD_UNIX_EPOCH = 2440587.5


def datetime_to_jd(t: datetime) -> tuple[float, float]:
    """Split Julian date ``(jd, fr)`` of a timezone-aware datetime (UTC scale)."""
    if t.tzinfo is None:
        raise ValueError(
            f"time {t.isoformat()} has no time zone; pass an aware UTC datetime"
        )
    t = t.astimezone(UTC)
    midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
    days = (midnight - datetime(1970, 1, 1, tzinfo=UTC)).days
    seconds = (t - midnight).total_seconds()
    return _JD_UNIX_EPOCH + days, seconds / DAY_S


def jd_to_datetime(jd: float, fr: float) -> datetime:
    """Inverse of :func:`datetime_to_jd`, rounded to the microsecond."""
    from datetime import timedelta

    whole = np.floor(jd - _JD_UNIX_EPOCH)
    rest_days = (jd - _JD_UNIX_EPOCH - whole) + fr
    base = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=float(whole))
    return base + timedelta(microseconds=round(rest_days * DAY_S * 1e6))


def gmst_rad(jd: np.ndarray, fr: np.ndarray) -> tuple[np.ndarray, float]:
    """Greenwich mean sidereal angle (IAU 1982) in radians, and its rate in rad/s.

    The term of one sidereal revolution per day is taken from the day fraction
    directly, so the angle keeps full precision far from J2000.
    """
    jd = np.asarray(jd, dtype=np.float64)
    fr = np.asarray(fr, dtype=np.float64)
    t = (jd - _J2000_JD + fr) / _JULIAN_CENTURY_DAYS
    c0, c1, c2, c3 = _GMST_S
    g_s = c0 + (c1 + (c2 + c3 * t) * t) * t
    turns = (np.fmod(jd, 1.0) + fr + g_s / DAY_S) % 1.0
    rate_turns_per_day = 1.0 + (c1 + (2.0 * c2 + 3.0 * c3 * t) * t) / (
        _JULIAN_CENTURY_DAYS * DAY_S
    )
    rate = float(np.mean(rate_turns_per_day)) * TWO_PI / DAY_S
    return turns * TWO_PI, rate


def teme_to_ecef_km(
    r_teme_km: np.ndarray, jd: np.ndarray, fr: np.ndarray
) -> np.ndarray:
    """Rotate TEME positions (``(..., T, 3)``) at times ``jd + fr`` (``(T,)``) to ECEF.

    A rotation about the pole by GMST (IAU 1982), the pseudo-Earth-fixed frame
    of Vallado et al., "Revisiting Spacetrack Report #3", AIAA 2006-6753.
    """
    theta, _ = gmst_rad(jd, fr)
    return _rotate_z(np.asarray(r_teme_km, dtype=np.float64), theta)


def teme_to_ecef_state_km(
    r_teme_km: np.ndarray,
    v_teme_km_s: np.ndarray,
    jd: np.ndarray,
    fr: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate TEME position and velocity to ECEF; velocity includes ``-w x r``."""
    theta, rate = gmst_rad(jd, fr)
    r = _rotate_z(np.asarray(r_teme_km, dtype=np.float64), theta)
    v = _rotate_z(np.asarray(v_teme_km_s, dtype=np.float64), theta)
    v[..., 0] += rate * r[..., 1]
    v[..., 1] -= rate * r[..., 0]
    return r, v


def _rotate_z(vec: np.ndarray, theta: np.ndarray) -> np.ndarray:
    c = np.cos(theta)
    s = np.sin(theta)
    out = np.empty(np.broadcast_shapes(vec.shape, c.shape + (3,)))
    out[..., 0] = c * vec[..., 0] + s * vec[..., 1]
    out[..., 1] = c * vec[..., 1] - s * vec[..., 0]
    out[..., 2] = vec[..., 2]
    return out


def propagate_teme(
    satrecs: Sequence[Satrec] | SatrecArray,
    jd: np.ndarray,
    fr: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Propagate many satellites to many times with one ``SatrecArray`` call.

    Returns ``(r_km, v_km_s, status)``: positions and velocities of shape
    ``(S, T, 3)`` in TEME with NaN where SGP4 failed, and ``status`` of shape
    ``(S,)`` holding, per satellite, the first non-zero SGP4 error code over
    the times (0 when every time propagated).  Nothing is raised for a bad
    satellite; see :data:`SGP4_ERROR_TEXT` for the codes.
    """
    array = satrecs if isinstance(satrecs, SatrecArray) else SatrecArray(satrecs)
    jd = np.ascontiguousarray(jd, dtype=np.float64).ravel()
    fr = np.ascontiguousarray(fr, dtype=np.float64).ravel()
    if jd.shape != fr.shape:
        raise ValueError(f"jd has shape {jd.shape} but fr has shape {fr.shape}")
    err, r, v = array.sgp4(jd, fr)
    bad = err != 0
    if bad.any():
        r[bad] = np.nan
        v[bad] = np.nan
    first = np.argmax(bad, axis=1)
    status = np.where(bad.any(axis=1), err[np.arange(err.shape[0]), first], 0)
    return r, v, status.astype(np.int8)


def station_frame(ecef_km: np.ndarray, lat_deg: float, lon_deg: float) -> np.ndarray:
    """Rows east, north, up (geodetic) of a site, as a 3x3 matrix."""
    lat = np.radians(lat_deg)
    lon = np.radians(lon_deg)
    sl, cl = np.sin(lat), np.cos(lat)
    so, co = np.sin(lon), np.cos(lon)
    return np.array(
        [
            [-so, co, 0.0],
            [-sl * co, -sl * so, cl],
            [cl * co, cl * so, sl],
        ]
    )


def look_angles(
    r_ecef_km: np.ndarray, site_ecef_km: np.ndarray, enu: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuth and elevation (degrees, geometric) and slant range (km).

    Azimuth is clockwise from true north in [0, 360).
    """
    rho = np.asarray(r_ecef_km) - site_ecef_km
    local = rho @ enu.T
    range_km = np.linalg.norm(local, axis=-1)
    el = np.degrees(np.arcsin(np.clip(local[..., 2] / range_km, -1.0, 1.0)))
    az = np.degrees(np.arctan2(local[..., 0], local[..., 1])) % 360.0
    return az, el, range_km
