"""Two-line element sets: checksums, formatting, and validated reading.

The layout is the one in the CelesTrak FAQ and Spacetrack Report No. 3: two
69-column lines, each ending in a modulo-10 checksum over its first 68
columns (digits count their value, a minus sign counts 1).  Epoch years are
two digits: 57-99 mean 1957-1999 and 00-56 mean 2000-2056.
"""

import math
from datetime import UTC, datetime, timedelta

# Column layout shown beside a bad line (1-based columns as in the FAQ).
LINE1_TEMPLATE = "1 NNNNNC NNNNNAAA YYDDD.DDDDDDDD +.NNNNNNNN +NNNNN-N +NNNNN-N N NNNNC"
LINE2_TEMPLATE = "2 NNNNN NNN.NNNN NNN.NNNN NNNNNNN NNN.NNNN NNN.NNNN NN.NNNNNNNNNNNNNC"
TLE_LINE_LENGTH = 69

_EPOCH_1949 = datetime(1949, 12, 31, tzinfo=UTC)


def tle_checksum(line: str) -> int:
    """Return the modulo-10 checksum of the first 68 columns of a TLE line."""
    total = 0
    for ch in line[:68]:
        if ch.isdigit():
            total += ord(ch) - 48
        elif ch == "-":
            total += 1
    return total % 10


def epoch_days_since_1949(epoch: datetime) -> float:
    """Days since 1949-12-31 00:00 UTC, the epoch argument of ``sgp4init``."""
    return (epoch.astimezone(UTC) - _EPOCH_1949) / timedelta(days=1)


def _exp_field(value: float) -> str:
    """Format a TLE "assumed decimal point" field such as `` 12345-4``."""
    if value == 0.0:
        return " 00000-0"
    sign = "-" if value < 0 else " "
    exponent = math.floor(math.log10(abs(value))) + 1
    mantissa = round(abs(value) / 10.0**exponent * 1e5)
    if mantissa >= 100000:
        mantissa //= 10
        exponent += 1
    if not -9 <= exponent <= 9:
        raise ValueError(f"{value!r} cannot be written in a TLE exponent field")
    return f"{sign}{mantissa:05d}{'-' if exponent < 0 else '+'}{abs(exponent)}"


def _angle(deg: float) -> str:
    """An angle reduced to [0, 360) after rounding to the 4 decimals a TLE keeps."""
    return f"{round(deg % 360.0, 4) % 360.0:8.4f}"


def format_tle(
    catalog_number: int,
    epoch: datetime,
    inclination_deg: float,
    raan_deg: float,
    eccentricity: float,
    arg_perigee_deg: float,
    mean_anomaly_deg: float,
    mean_motion_rev_day: float,
    bstar: float = 0.0,
    ndot_rev_day2: float = 0.0,
    classification: str = "U",
    international_designator: str = "",
    element_number: int = 999,
    revolution_number: int = 0,
) -> tuple[str, str]:
    """Write mean elements as TLE lines 1 and 2 with correct checksums.

    ``ndot_rev_day2`` is the first derivative of mean motion divided by two, as
    the TLE stores it.  Angles are reduced to [0, 360).
    """
    epoch = epoch.astimezone(UTC)
    if not 1957 <= epoch.year <= 2056:
        raise ValueError(f"epoch year {epoch.year} is outside 1957-2056")
    if not 0 < catalog_number <= 99999:
        raise ValueError(f"catalog_number={catalog_number} is outside 1..99999")
    if not 0.0 <= eccentricity < 1.0:
        raise ValueError(f"eccentricity={eccentricity} is outside [0, 1)")
    if not 0.0 < mean_motion_rev_day < 100.0:
        raise ValueError(f"mean_motion_rev_day={mean_motion_rev_day} not in (0, 100)")
    start_of_year = datetime(epoch.year, 1, 1, tzinfo=UTC)
    day_of_year = 1.0 + (epoch - start_of_year) / timedelta(days=1)
    days_in_year = (datetime(epoch.year + 1, 1, 1, tzinfo=UTC) - start_of_year).days
    day_field = f"{day_of_year:012.8f}"
    if float(day_field) >= days_in_year + 1:  # rounded into the next year
        day_field = f"{days_in_year:03d}.99999999"
    ndot_field = f"{ndot_rev_day2:.8f}".replace("0.", ".", 1)
    ndot_field = f"{ndot_field:>10}" if ndot_field[0] == "-" else f" {ndot_field:>9}"
    line1 = (
        f"1 {catalog_number:05d}{classification[:1] or 'U'} "
        f"{international_designator[:8]:<8} {epoch.year % 100:02d}{day_field} "
        f"{ndot_field} {_exp_field(0.0)} {_exp_field(bstar)} 0 "
        f"{element_number % 10000:4d}"
    )
    ecc_field = f"{min(round(eccentricity * 1e7), 9999999):07d}"
    line2 = (
        f"2 {catalog_number:05d} {inclination_deg:8.4f} {_angle(raan_deg)} "
        f"{ecc_field} {_angle(arg_perigee_deg)} "
        f"{_angle(mean_anomaly_deg)} {mean_motion_rev_day:11.8f}"
        f"{revolution_number % 100000:5d}"
    )
    line1 += str(tle_checksum(line1))
    line2 += str(tle_checksum(line2))
    return line1, line2
