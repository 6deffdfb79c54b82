"""Geodetic positions and the Earth constants the rest of the code shares."""

import math
from dataclasses import dataclass

import numpy as np

# WGS84 ellipsoid, for geodetic <-> Earth-fixed conversion of ground sites.
# (SGP4 itself uses WGS72 constants internally; see the orbit modules.)
WGS84_A_KM = 6378.137
WGS84_F = 1.0 / 298.257223563
WGS84_E2 = WGS84_F * (2.0 - WGS84_F)

EARTH_MEAN_RADIUS_KM = 6371.0088  # IUGG mean radius
SPEED_OF_LIGHT_KM_S = 299_792.458
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class Position:
    """A geodetic position: latitude and longitude in degrees, altitude in km.

    Latitude is in [-90, 90]; longitude is accepted in [-180, 360] and kept as
    given.  Altitude is height above the WGS84 ellipsoid.
    """

    lat_deg: float
    lon_deg: float
    alt_km: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("lat_deg", "lon_deg", "alt_km"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value):
                problems.append(f"{name}={value!r} is not a finite number")
        if not problems:
            if not -90.0 <= self.lat_deg <= 90.0:
                problems.append(f"lat_deg={self.lat_deg} is outside [-90, 90]")
            if not -180.0 <= self.lon_deg <= 360.0:
                problems.append(f"lon_deg={self.lon_deg} is outside [-180, 360]")
            if self.alt_km < -0.5:
                problems.append(
                    f"alt_km={self.alt_km} is below -0.5 km; altitudes are "
                    "kilometres above the WGS84 ellipsoid"
                )
        if problems:
            raise ValueError("invalid Position: " + "; ".join(problems))

    def ecef_km(self) -> np.ndarray:
        """Return the Earth-fixed (ITRS/ECEF) position as a 3-vector in km."""
        lat = math.radians(self.lat_deg)
        lon = math.radians(self.lon_deg)
        sin_lat = math.sin(lat)
        n = WGS84_A_KM / math.sqrt(1.0 - WGS84_E2 * sin_lat * sin_lat)
        r_xy = (n + self.alt_km) * math.cos(lat)
        return np.array(
            [
                r_xy * math.cos(lon),
                r_xy * math.sin(lon),
                (n * (1.0 - WGS84_E2) + self.alt_km) * sin_lat,
            ]
        )

    def distance_km(self, other: "Position") -> float:
        """Straight-line (chord) distance to another position, in km."""
        return float(np.linalg.norm(self.ecef_km() - other.ecef_km()))
