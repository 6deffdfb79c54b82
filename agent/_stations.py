"""Ground stations: where they are, what they can see, and how fast they talk.

Rate model
----------
A station's ``downlink_mbps`` and ``uplink_mbps`` are the rates at zenith.
Lower in the sky the slant range grows and free-space path loss with it,
``20 log10(range / zenith_range)`` dB more than at zenith (zenith range is the
satellite's height above the station).  Adaptive coding and modulation steps
down to a more robust, slower code as the margin shrinks; :data:`ACM_STEPS`
models that as a step table of rate fraction against extra path loss, spaced
like the DVB-S2 MODCOD ladder (roughly 2-3 dB of Es/N0 per halving of
spectral efficiency near the bottom of the ladder).  The capacity of a pass is
the time integral of that rate; 1 MB is 1e6 bytes and 1 Mbps is 1e6 bit/s.

Refraction
----------
Elevations are geometric unless a station has ``refraction=True``.  Then its
mask applies to the *apparent* elevation, which the atmosphere lifts by
Bennett's refraction (G. G. Bennett, "The calculation of astronomical
refraction in marine navigation", J. Navigation 35, 1982):
``R = 1 / tan(h + 7.31 / (h + 4.4))`` arcminutes at apparent elevation ``h``
degrees, scaled by ``0.28 P / (T + 273)`` for pressure ``P`` mbar and
temperature ``T`` deg C (Meeus, Astronomical Algorithms, ch. 16), and taken
as zero below -1 deg and above 89.9 deg -- the convention of skyfield's
``earthlib.refraction``, whose defaults, 10 C and 1010 mbar, are used here.
Because Bennett's formula takes the apparent elevation, the geometric
elevation at which a satellite meets an apparent mask ``m`` is exactly
``m - R(m)``: the window search simply uses that lower geometric mask.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent._geo import Position
from agent._orbit import station_frame

# (extra path loss over zenith in dB, fraction of the zenith rate) -- the
# fraction applies while the loss is at most the first number.
ACM_STEPS: tuple[tuple[float, float], ...] = (
    (2.0, 1.0),
    (4.0, 0.75),
    (6.0, 0.5),
    (9.0, 0.3),
    (12.0, 0.15),
    (math.inf, 0.05),
)
_ACM_LOSS_DB = np.array([s[0] for s in ACM_STEPS[:-1]])
_ACM_FRACTION = np.array([s[1] for s in ACM_STEPS])

REFRACTION_TEMPERATURE_C = 10.0
REFRACTION_PRESSURE_MBAR = 1010.0


def refraction_deg(
    apparent_elevation_deg: np.ndarray,
    temperature_c: float = REFRACTION_TEMPERATURE_C,
    pressure_mbar: float = REFRACTION_PRESSURE_MBAR,
) -> np.ndarray:
    """Bennett's (1982) refraction, in degrees, at an apparent elevation.

    Zero outside [-1, 89.9] deg, as in skyfield: the formula is not meant for
    objects well below the horizon, and near the zenith refraction vanishes.
    """
    h = np.asarray(apparent_elevation_deg, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_arcmin = 1.0 / np.tan(np.radians(h + 7.31 / (h + 4.4)))
    scale = 0.28 * pressure_mbar / (temperature_c + 273.0)
    return np.where((h >= -1.0) & (h <= 89.9), r_arcmin / 60.0 * scale, 0.0)


def _refraction_slope(
    apparent_elevation_deg: np.ndarray, temperature_c: float, pressure_mbar: float
) -> np.ndarray:
    """d(refraction_deg)/d(apparent elevation), degrees per degree."""
    h = np.asarray(apparent_elevation_deg, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.radians(h + 7.31 / (h + 4.4))
        dx_dh = np.radians(1.0 - 7.31 / (h + 4.4) ** 2)
        d_arcmin = -dx_dh / np.sin(x) ** 2
    scale = 0.28 * pressure_mbar / (temperature_c + 273.0)
    return np.where((h >= -1.0) & (h <= 89.9), d_arcmin / 60.0 * scale, 0.0)


def apparent_elevation_deg(
    geometric_elevation_deg: np.ndarray,
    temperature_c: float = REFRACTION_TEMPERATURE_C,
    pressure_mbar: float = REFRACTION_PRESSURE_MBAR,
) -> np.ndarray:
    """Where a satellite at a geometric elevation appears: ``h + R(apparent)``.

    Fixed-point iteration (Bennett's formula takes the apparent elevation);
    the step shrinks by |dR/dh| < 0.2 each time, so eight steps reach far
    below a micro-degree.
    """
    h0 = np.asarray(geometric_elevation_deg, dtype=np.float64)
    h = h0
    for _ in range(8):
        h = h0 + refraction_deg(h, temperature_c, pressure_mbar)
    return h


def rate_fraction(range_km: np.ndarray, zenith_range_km: np.ndarray) -> np.ndarray:
    """Fraction of the zenith data rate at a slant range (see :data:`ACM_STEPS`)."""
    ratio = np.maximum(np.asarray(range_km) / np.maximum(zenith_range_km, 1e-3), 1.0)
    loss_db = 20.0 * np.log10(ratio)
    return _ACM_FRACTION[np.searchsorted(_ACM_LOSS_DB, loss_db, side="left")]


@dataclass(frozen=True)
class GroundStation:
    """A ground station with a minimum elevation, an optional horizon mask, antennas.

    ``horizon_mask`` is a sequence of ``(azimuth_deg, elevation_deg)`` points,
    interpolated linearly in azimuth (wrapping at 360); the effective mask at an
    azimuth is the larger of that and ``min_elevation_deg``.  ``antennas`` is
    how many satellites the station can serve at once.  With ``refraction``
    the mask applies to the apparent elevation (see the module docstring),
    for ``temperature_c`` and ``pressure_mbar`` at the station.
    """

    name: str
    position: Position
    uplink_mbps: float
    downlink_mbps: float
    min_elevation_deg: float = 5.0
    horizon_mask: tuple[tuple[float, float], ...] | None = None
    antennas: int = 1
    refraction: bool = False
    temperature_c: float = REFRACTION_TEMPERATURE_C
    pressure_mbar: float = REFRACTION_PRESSURE_MBAR
    _mask_az_deg: np.ndarray | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _mask_el_deg: np.ndarray | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not self.name:
            problems.append(f"name={self.name!r} must be a non-empty string")
        if not isinstance(self.position, Position):
            problems.append(
                f"position={self.position!r} must be an agent.Position "
                "(lat_deg, lon_deg, alt_km)"
            )
        for label in ("uplink_mbps", "downlink_mbps"):
            value = getattr(self, label)
            if not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0
            ):
                problems.append(f"{label}={value!r} must be a finite rate >= 0")
        el = self.min_elevation_deg
        if not isinstance(el, int | float) or not -10.0 <= el < 90.0:
            problems.append(f"min_elevation_deg={el!r} must be in [-10, 90)")
        if not isinstance(self.antennas, int) or self.antennas < 1:
            problems.append(f"antennas={self.antennas!r} must be an integer >= 1")
        if not isinstance(self.refraction, bool):
            problems.append(f"refraction={self.refraction!r} must be True or False")
        t_c, p_mbar = self.temperature_c, self.pressure_mbar
        if not isinstance(t_c, int | float) or not -90.0 <= t_c <= 60.0:
            problems.append(f"temperature_c={t_c!r} must be in [-90, 60] deg C")
        if not isinstance(p_mbar, int | float) or not 0.0 <= p_mbar <= 1100.0:
            problems.append(f"pressure_mbar={p_mbar!r} must be in [0, 1100] mbar")
        if self.horizon_mask is not None:
            try:
                mask = tuple(tuple(map(float, p)) for p in self.horizon_mask)
            except (TypeError, ValueError):
                problems.append(
                    f"horizon_mask={self.horizon_mask!r} must be a sequence of "
                    "(azimuth_deg, elevation_deg) number pairs"
                )
                mask = None
            if mask is not None:
                object.__setattr__(self, "horizon_mask", mask)
                problems.extend(_mask_problems(mask))
            if not problems:
                order = np.argsort([p[0] % 360.0 for p in mask], kind="stable")
                az = np.array([mask[i][0] % 360.0 for i in order])
                el_mask = np.array([mask[i][1] for i in order])
                # wrap one point each side so interpolation is periodic
                object.__setattr__(
                    self,
                    "_mask_az_deg",
                    np.concatenate([[az[-1] - 360.0], az, [az[0] + 360.0]]),
                )
                object.__setattr__(
                    self,
                    "_mask_el_deg",
                    np.concatenate([[el_mask[-1]], el_mask, [el_mask[0]]]),
                )
        if problems:
            raise ValueError(
                f"invalid GroundStation {self.name!r}: " + "; ".join(problems)
            )

    @property
    def has_mask(self) -> bool:
        return self._mask_az_deg is not None

    @property
    def lowest_mask_deg(self) -> float:
        """The lowest elevation at which the station can ever see a satellite."""
        if self._mask_el_deg is None:
            return float(self.min_elevation_deg)
        return float(max(self.min_elevation_deg, self._mask_el_deg.min()))

    def mask_deg(self, azimuth_deg: np.ndarray) -> np.ndarray:
        """The effective minimum elevation (degrees) at each azimuth."""
        az = np.asarray(azimuth_deg, dtype=np.float64) % 360.0
        if self._mask_az_deg is None:
            return np.full(az.shape, float(self.min_elevation_deg))
        return np.maximum(
            np.interp(az, self._mask_az_deg, self._mask_el_deg), self.min_elevation_deg
        )

    def mask_slope(self, azimuth_deg: np.ndarray) -> np.ndarray:
        """d(mask)/d(azimuth), degrees per degree, where the mask is above the floor."""
        az = np.asarray(azimuth_deg, dtype=np.float64) % 360.0
        if self._mask_az_deg is None:
            return np.zeros(az.shape)
        i = np.clip(np.searchsorted(self._mask_az_deg, az, side="right") - 1, 0, None)
        i = np.minimum(i, len(self._mask_az_deg) - 2)
        d_az = np.diff(self._mask_az_deg)
        slope = np.diff(self._mask_el_deg) / np.where(d_az > 0, d_az, 1.0)
        above = (
            np.interp(az, self._mask_az_deg, self._mask_el_deg) > self.min_elevation_deg
        )
        return np.where(above, slope[i], 0.0)

    def geometric_mask_deg(self, azimuth_deg: np.ndarray) -> np.ndarray:
        """The geometric elevation at which the (apparent) mask is met."""
        mask = self.mask_deg(azimuth_deg)
        if not self.refraction:
            return mask
        return mask - refraction_deg(mask, self.temperature_c, self.pressure_mbar)

    def geometric_mask_slope(self, azimuth_deg: np.ndarray) -> np.ndarray:
        """d(geometric_mask_deg)/d(azimuth), degrees per degree."""
        slope = self.mask_slope(azimuth_deg)
        if not self.refraction:
            return slope
        mask = self.mask_deg(azimuth_deg)
        return slope * (
            1.0 - _refraction_slope(mask, self.temperature_c, self.pressure_mbar)
        )

    @property
    def lowest_geometric_mask_deg(self) -> float:
        """The lowest geometric elevation at which the station can see a satellite.

        ``m - R(m)`` rises with ``m`` (|dR/dm| < 1) except for the jump where
        refraction is cut off at -1 deg, so the lowest mask, and just above
        -1 deg when the mask spans it, bound it from below.
        """
        low = self.lowest_mask_deg
        if not self.refraction:
            return low
        candidates = [low] + ([-1.0] if low <= -1.0 else [])
        return float(
            min(
                c - refraction_deg(c, self.temperature_c, self.pressure_mbar)
                for c in candidates
            )
        )

    def ecef_km(self) -> np.ndarray:
        return self.position.ecef_km()

    def enu_matrix(self) -> np.ndarray:
        """Rows: the station's east, north and (geodetic) up unit vectors in ECEF."""
        return station_frame(
            self.ecef_km(), self.position.lat_deg, self.position.lon_deg
        )


def _mask_problems(mask: Sequence[tuple[float, ...]]) -> list[str]:
    problems = []
    if len(mask) < 1:
        problems.append("horizon_mask is empty; pass None for no mask")
    for point in mask:
        if len(point) != 2:
            problems.append(
                f"horizon_mask point {point!r} is not (azimuth_deg, elevation_deg)"
            )
            continue
        az, el = point
        if not (math.isfinite(az) and math.isfinite(el) and -10.0 <= el < 90.0):
            problems.append(
                f"horizon_mask point ({az}, {el}) needs a finite azimuth and an "
                "elevation in [-10, 90)"
            )
    azimuths = [round(p[0] % 360.0, 9) for p in mask if len(p) == 2]
    if len(set(azimuths)) != len(azimuths):
        problems.append(f"horizon_mask repeats an azimuth: {sorted(azimuths)}")
    return problems
