"""Two-line element sets: checksums, formatting, and validated reading.

The layout is the one in the CelesTrak FAQ and Spacetrack Report No. 3: two
69-column lines, each ending in a modulo-10 checksum over its first 68
columns (digits count their value, a minus sign counts 1).  Epoch years are
two digits: 57-99 mean 1957-1999 and 00-56 mean 2000-2056.
"""

import calendar
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sgp4 import exporter, omm
from sgp4.api import WGS72, Satrec

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
    if epoch.tzinfo is None:
        # astimezone() would read a naive epoch as the host's local time
        raise ValueError(
            f"epoch={epoch.isoformat()} has no time zone; pass an aware UTC datetime"
        )
    epoch = epoch.astimezone(UTC)
    if not 1957 <= epoch.year <= 2056:
        raise ValueError(f"epoch year {epoch.year} is outside 1957-2056")
    angles = {
        "inclination_deg": inclination_deg,
        "raan_deg": raan_deg,
        "arg_perigee_deg": arg_perigee_deg,
        "mean_anomaly_deg": mean_anomaly_deg,
        "bstar": bstar,
        "ndot_rev_day2": ndot_rev_day2,
    }
    for label, value in angles.items():
        if not math.isfinite(value):
            raise ValueError(f"{label}={value!r} is not a finite number")
    if not 0.0 <= inclination_deg <= 180.0:
        raise ValueError(f"inclination_deg={inclination_deg} is outside [0, 180]")
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


def write_tles(path: str | Path, tles: Sequence[tuple[str, str, str]]) -> None:
    """Write ``(name, line1, line2)`` triples as a three-line (CelesTrak) file.

    Every pair is validated first; nothing is written if one is bad.
    """
    problems = [
        f"{name!r}: {problem}"
        for name, line1, line2 in tles
        for problem in validate_tle(line1, line2)
    ]
    if problems:
        raise TLEError(problems)
    text = "".join(f"{name}\n{line1}\n{line2}\n" for name, line1, line2 in tles)
    Path(path).write_text(text, encoding="ascii")


# -- reading and validation ----------------------------------------------------


class TLEError(ValueError):
    """An element set that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], name: str | None = None) -> None:
        self.problems = list(problems)
        self.name = name
        label = f"TLE {name!r}" if name else "TLE"
        super().__init__(f"{label} is invalid: " + "\n".join(self.problems))


@dataclass(frozen=True)
class TLEEntry:
    """One usable element set: its name, its two lines and the parsed ``Satrec``.

    For OMM input the lines are the equivalent TLE written by ``sgp4``'s
    exporter.  ``line_number`` is where the entry starts in its file (1-based;
    the record index for OMM).
    """

    name: str
    line1: str
    line2: str
    satrec: Satrec = field(repr=False, compare=False)
    line_number: int = 0


@dataclass(frozen=True)
class TLEProblem:
    """An entry of a file that was skipped, with where it is and why."""

    line_number: int
    name: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line_number} ({self.name}): {self.message}"


@dataclass
class TLELoad:
    """What a file yielded: the good entries and the problems with the rest."""

    entries: list[TLEEntry] = field(default_factory=list)
    problems: list[TLEProblem] = field(default_factory=list)


def _two_digit_year(yy: int) -> int:
    # Spacetrack convention: 57-99 are 1957-1999, 00-56 are 2000-2056
    return 1900 + yy if yy >= 57 else 2000 + yy


def _show(line_no: int, line: str) -> str:
    template = LINE1_TEMPLATE if line_no == 1 else LINE2_TEMPLATE
    return f"\n    got:      {line!r}\n    expected: {template!r}"


_FLOAT_FIELDS = {
    1: ((20, 32, "epoch day"), (33, 43, "first derivative of mean motion")),
    2: (
        (8, 16, "inclination"),
        (17, 25, "right ascension of the ascending node"),
        (34, 42, "argument of perigee"),
        (43, 51, "mean anomaly"),
        (52, 63, "mean motion"),
    ),
}
_EXP_FIELDS = ((44, 52, "second derivative of mean motion"), (53, 61, "B*"))
_EXP_RE = re.compile(r"^[ +-]?\d{0,5}[+-]?\d$|^ *$")


def validate_tle(line1: str, line2: str) -> list[str]:
    """Every problem with a pair of TLE lines, as sentences; empty when valid."""
    problems = []
    lines = {1: line1.rstrip("\r\n "), 2: line2.rstrip("\r\n ")}
    layout_ok = True
    for no, line in lines.items():
        if not line.startswith(f"{no} "):
            problems.append(
                f"TLE line {no} must start with '{no} ' but starts with "
                f"{line[:2]!r}" + _show(no, line)
            )
            layout_ok = False
            continue
        if len(line) != TLE_LINE_LENGTH:
            problems.append(
                f"TLE line {no} has {len(line)} characters, expected "
                f"{TLE_LINE_LENGTH}" + _show(no, line)
            )
            layout_ok = False
            continue
        stated = line[68]
        computed = tle_checksum(line)
        if stated != str(computed):
            problems.append(
                f"TLE line {no} checksum is {stated!r} but the line sums to "
                f"{computed}; re-download the element set" + _show(no, line)
            )
        for lo, hi, label in _FLOAT_FIELDS[no]:
            text = line[lo:hi]
            try:
                float(text.replace(" ", "") or "x")
            except ValueError:
                problems.append(
                    f"TLE line {no} columns {lo + 1}-{hi} ({label}) hold {text!r}, "
                    "not a number" + _show(no, line)
                )
        if no == 1:
            for lo, hi, label in _EXP_FIELDS:
                if not _EXP_RE.match(line[lo:hi]):
                    problems.append(
                        f"TLE line 1 columns {lo + 1}-{hi} ({label}) hold "
                        f"{line[lo:hi]!r}, expected the form ' 12345-6'"
                        + _show(1, line)
                    )
        else:
            ecc = line[26:33]
            if not ecc.strip().isdigit():
                problems.append(
                    f"TLE line 2 columns 27-33 (eccentricity, decimal point "
                    f"assumed) hold {ecc!r}, expected 7 digits" + _show(2, line)
                )
    if not layout_ok:
        return problems

    l1, l2 = lines[1], lines[2]
    if l1[2:7] != l2[2:7]:
        problems.append(
            f"catalog numbers differ: line 1 has {l1[2:7]!r}, line 2 has "
            f"{l2[2:7]!r}; the lines belong to different objects"
        )
    yy = l1[18:20]
    if not yy.isdigit():
        problems.append(
            f"TLE line 1 columns 19-20 (epoch year) hold {yy!r}, expected two "
            "digits (57-99 mean 1957-1999, 00-56 mean 2000-2056)" + _show(1, l1)
        )
    else:
        year = _two_digit_year(int(yy))
        try:
            day = float(l1[20:32])
        except ValueError:
            day = None
        if day is not None:
            days_in_year = 366 if calendar.isleap(year) else 365
            if not 1.0 <= day < days_in_year + 1.0:
                problems.append(
                    f"TLE line 1 epoch day {day} is outside 1..{days_in_year}."
                    f"99999999 for {year}"
                    + (" (not a leap year)" if days_in_year == 365 else "")
                    + _show(1, l1)
                )
    return problems


def parse_tle_lines(line1: str, line2: str, name: str | None = None) -> Satrec:
    """Validate two TLE lines and return the ``Satrec``; raise :class:`TLEError`.

    All problems of the pair are collected and raised together.
    """
    problems = validate_tle(line1, line2)
    if problems:
        raise TLEError(problems, name)
    try:
        sat = Satrec.twoline2rv(line1.rstrip("\r\n "), line2.rstrip("\r\n "), WGS72)
    except (ValueError, IndexError) as exc:
        raise TLEError([f"sgp4 could not read the element set: {exc}"], name) from None
    if sat.error:
        raise TLEError(
            [f"sgp4 rejected the elements at epoch (error {sat.error})"], name
        )
    return sat


def read_tle_text(text: str) -> TLELoad:
    """Read a two- or three-line TLE file's text; bad entries become problems.

    Line ends may be LF or CRLF, the final newline may be missing, name lines
    may carry the ``0 `` prefix of the three-line format.
    """
    result = TLELoad()
    lines = [ln.rstrip() for ln in text.splitlines()]
    pending: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if _looks_like(line, "1"):
            name_no, name = pending if pending else (i + 1, "")
            pending = None
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if not _looks_like(nxt, "2"):
                result.problems.append(
                    TLEProblem(
                        i + 1,
                        name or line[2:7].strip(),
                        "TLE line 1 is not followed by a line 2 "
                        f"(next line is {nxt!r})",
                    )
                )
                i += 1
                continue
            name = name or line[2:7].strip()
            try:
                sat = parse_tle_lines(line, nxt, name)
            except TLEError as exc:
                result.problems.append(
                    TLEProblem(name_no, name, "; ".join(exc.problems))
                )
            else:
                result.entries.append(TLEEntry(name, line, nxt, sat, name_no))
            i += 2
            continue
        if _looks_like(line, "2"):
            result.problems.append(
                TLEProblem(i + 1, line[2:7].strip(), "TLE line 2 without a line 1")
            )
            i += 1
            continue
        if pending is not None:
            result.problems.append(
                TLEProblem(pending[0], pending[1], "name line with no element lines")
            )
        name = line.strip()
        if name.startswith("0 "):
            name = name[2:].strip()
        pending = (i + 1, name)
        i += 1
    if pending is not None:
        result.problems.append(
            TLEProblem(pending[0], pending[1], "name line with no element lines")
        )
    return result


_LINE_START = {
    "1": re.compile(r"^1 [0-9A-Z ]{5}[A-Z ] "),
    "2": re.compile(r"^2 [0-9A-Z ]{5} "),
}


def _looks_like(line: str, number: str) -> bool:
    """Whether a line is meant as TLE line 1 or 2 (even if truncated or bad)."""
    return bool(_LINE_START[number].match(line))


def read_omm_text(text: str, fmt: str) -> TLELoad:
    """Read OMM records (``fmt`` is ``json``, ``csv`` or ``xml``) with sgp4.omm."""
    result = TLELoad()
    try:
        if fmt == "json":
            records = json.loads(text)
            if isinstance(records, dict):
                records = [records]
        elif fmt == "csv":
            records = list(omm.parse_csv(io.StringIO(text)))
        elif fmt == "xml":
            records = list(omm.parse_xml(io.StringIO(text)))
        else:
            raise ValueError(f"OMM format {fmt!r} is not one of json, csv, xml")
    except (json.JSONDecodeError, ET.ParseError) as exc:
        result.problems.append(TLEProblem(0, "", f"unreadable OMM {fmt}: {exc}"))
        return result
    if not isinstance(records, list):
        result.problems.append(
            TLEProblem(
                0,
                "",
                f"OMM {fmt} holds a {type(records).__name__}, expected a list of "
                "records (objects with EPOCH, MEAN_MOTION, ...)",
            )
        )
        return result
    for number, fields in enumerate(records, start=1):
        if not isinstance(fields, dict):
            result.problems.append(
                TLEProblem(
                    number,
                    str(number),
                    f"OMM record {number} is {fields!r:.40}, expected an object "
                    "with EPOCH, MEAN_MOTION, ...",
                )
            )
            continue
        name = str(fields.get("OBJECT_NAME") or fields.get("NORAD_CAT_ID") or number)
        problems = _omm_problems(fields)
        if not problems:
            sat = Satrec()
            try:
                omm.initialize(sat, fields)
                line1, line2 = exporter.export_tle(sat)
            except (KeyError, ValueError, TypeError) as exc:
                problems.append(f"sgp4 could not read the record: {exc!r}")
            else:
                if sat.error:
                    problems.append(f"sgp4 rejected the elements (error {sat.error})")
        if problems:
            result.problems.append(TLEProblem(number, name, "; ".join(problems)))
        else:
            result.entries.append(TLEEntry(name, line1, line2, sat, number))
    return result


_OMM_REQUIRED = (
    "EPOCH", "MEAN_MOTION", "ECCENTRICITY", "INCLINATION", "RA_OF_ASC_NODE",
    "ARG_OF_PERICENTER", "MEAN_ANOMALY", "NORAD_CAT_ID", "BSTAR",
    "MEAN_MOTION_DOT", "MEAN_MOTION_DDOT", "CLASSIFICATION_TYPE", "OBJECT_ID",
    "EPHEMERIS_TYPE", "ELEMENT_SET_NO", "REV_AT_EPOCH",
)  # fmt: skip


def _omm_problems(fields: dict) -> list[str]:
    missing = [k for k in _OMM_REQUIRED if fields.get(k) in (None, "")]
    if missing:
        return [f"OMM record lacks {', '.join(missing)}"]
    problems = []
    epoch = str(fields["EPOCH"])
    try:
        year = datetime.strptime(epoch[:19], "%Y-%m-%dT%H:%M:%S").year
    except ValueError:
        problems.append(
            f"EPOCH {epoch!r} is not of the form 2024-11-05T12:34:56.789012"
        )
    else:
        if not 1957 <= year <= 2056:
            problems.append(f"EPOCH year {year} is outside 1957-2056")
    for key in _OMM_REQUIRED[1:11]:
        try:
            float(fields[key])
        except (TypeError, ValueError):
            problems.append(f"{key} is {fields[key]!r}, not a number")
    return problems


def load_elements(path: str | Path) -> TLELoad:
    """Read a TLE file, or an OMM file (``.json``, ``.csv``, ``.xml``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("json", "csv", "xml"):
        return read_omm_text(text, suffix)
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        return read_omm_text(text, "json")
    if stripped.startswith("<"):
        return read_omm_text(text, "xml")
    return read_tle_text(text)
