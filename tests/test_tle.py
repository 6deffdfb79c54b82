"""Reading and validating TLE and OMM files."""

import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import numpy as np
import pytest
from sgp4 import exporter
from sgp4.api import Satrec

from agent._tle import (
    TLEError,
    format_tle,
    load_elements,
    parse_tle_lines,
    read_omm_text,
    read_tle_text,
    tle_checksum,
    validate_tle,
)

ISS = (
    "ISS (ZARYA)",
    "1 25544U 98067A   24315.56818287  .00030155  00000+0  52590-3 0  9990",
    "2 25544  51.6413 279.8950 0008559 241.3066 234.2330 15.50425468480622",
)

SET_SIZES = {
    "starlink_2023-07-18.txt": 4428,
    "stations_2024-11.txt": 23,
    "stations_2013-03.txt": 7,
    "geo_2013-03.txt": 415,
    "molniya_2022-02.txt": 36,
    "goes_2022-02.txt": 17,
    "gps-ops_2022-02.txt": 31,
    "galileo_2022-02.txt": 28,
    "noaa_2022-02.txt": 22,
}


def _fix_checksum(line: str) -> str:
    return line[:68] + str(tle_checksum(line))


@pytest.fixture(scope="module")
def iss():
    # take the real ISS lines from the shared set when present, else the
    # constant above (whose checksums are recomputed to be valid)
    return ISS[0], _fix_checksum(ISS[1]), _fix_checksum(ISS[2])


@pytest.mark.parametrize("name", sorted(SET_SIZES))
def test_every_real_set_loads_completely(tle_dir, name):
    load = load_elements(tle_dir / name)
    assert load.problems == []
    assert len(load.entries) == SET_SIZES[name]
    assert all(e.name and e.satrec.error == 0 for e in load.entries)


def test_checksum_matches_the_published_lines(tle_dir):
    text = (tle_dir / "stations_2024-11.txt").read_text()
    lines = [ln.rstrip() for ln in text.splitlines() if ln[:2] in ("1 ", "2 ")]
    assert lines
    for line in lines:
        assert tle_checksum(line) == int(line[68])


def test_line_ends_and_missing_final_newline_do_not_matter(iss):
    name, l1, l2 = iss
    base = f"{name}\n{l1}\n{l2}\n"
    for text in (base, base.replace("\n", "\r\n"), base.rstrip("\n"), f"{l1}\n{l2}"):
        load = read_tle_text(text)
        assert load.problems == []
        assert [(e.line1, e.line2) for e in load.entries] == [(l1, l2)]
    assert read_tle_text(f"0 {name}\n{l1}\n{l2}").entries[0].name == name
    assert read_tle_text(f"{l1}\n{l2}").entries[0].name == "25544"


def test_bad_checksum_inside_a_file_of_good_ones(tle_dir):
    lines = (tle_dir / "noaa_2022-02.txt").read_text().splitlines()
    bad_line1 = lines[4]
    stated = int(bad_line1[68])
    lines[4] = bad_line1[:68] + str((stated + 3) % 10)
    load = read_tle_text("\n".join(lines))
    assert len(load.entries) == SET_SIZES["noaa_2022-02.txt"] - 1
    (problem,) = load.problems
    assert problem.line_number == 4 and problem.name == lines[3].strip()
    computed = tle_checksum(bad_line1)
    assert f"checksum is '{(stated + 3) % 10}' but the line sums to {computed}" in (
        problem.message
    )
    assert "expected: '1 NNNNNC" in problem.message  # the layout beside it


def test_wrong_length_shows_the_expected_layout(iss):
    _, l1, l2 = iss
    problems = validate_tle(l1[:60], l2)
    assert len(problems) == 1
    assert "has 60 characters, expected 69" in problems[0]
    assert "expected: '1 NNNNNC NNNNNAAA" in problems[0]


def test_truncated_line_in_a_file_is_reported_by_its_length(iss):
    name, l1, l2 = iss
    load = read_tle_text(f"{name}\n{l1[:50]}\n{l2}\nOTHER\n{l1}\n{l2}\n")
    assert [e.name for e in load.entries] == ["OTHER"]
    (problem,) = load.problems
    assert problem.name == name and problem.line_number == 1
    assert "TLE line 1 has 50 characters, expected 69" in problem.message


def test_unparsable_field_is_named_with_its_columns(iss):
    _, l1, l2 = iss
    broken = _fix_checksum(l2[:8] + " 51.6X13" + l2[16:])
    (problem,) = validate_tle(l1, broken)
    assert "columns 9-16 (inclination)" in problem and "' 51.6X13'" in problem


def test_day_366_of_a_non_leap_year_is_a_clear_error(iss):
    _, l1, l2 = iss
    # 2023 is not a leap year
    bad = _fix_checksum(l1[:18] + "23366.50000000" + l1[32:])
    with pytest.raises(TLEError) as info:
        parse_tle_lines(bad, l2)
    (problem,) = info.value.problems
    assert "epoch day 366.5 is outside 1..365.99999999 for 2023" in problem
    assert "not a leap year" in problem
    # ... and day 366 of a leap year is fine
    good = _fix_checksum(l1[:18] + "24366.50000000" + l1[32:])
    assert parse_tle_lines(good, l2).epochyr == 24


def test_all_problems_of_a_pair_are_reported_together(iss):
    _, l1, l2 = iss
    l1_bad = l1[:68] + str((int(l1[68]) + 1) % 10)
    l2_other = _fix_checksum(l2[:2] + "99999" + l2[7:])
    problems = validate_tle(l1_bad, l2_other)
    assert len(problems) == 2
    assert "checksum" in problems[0] and "catalog numbers differ" in problems[1]


def test_orphan_lines_are_reported_and_the_rest_loads(iss):
    name, l1, l2 = iss
    text = f"LONELY NAME\n{name}\n{l1}\n{l2}\n{l1}\nEND NAME\n"
    load = read_tle_text(text)
    assert [e.name for e in load.entries] == [name]
    messages = [str(p) for p in load.problems]
    assert any("LONELY NAME" in m and "no element lines" in m for m in messages)
    assert any("not followed by a line 2" in m for m in messages)
    assert any("END NAME" in m for m in messages)


def test_format_tle_round_trips_through_sgp4():
    epoch = datetime(2024, 2, 29, 18, 30, 15, 250000, tzinfo=UTC)
    l1, l2 = format_tle(
        catalog_number=12345,
        epoch=epoch,
        inclination_deg=97.6,
        raan_deg=-10.0,
        eccentricity=0.0012345,
        arg_perigee_deg=359.99999,
        mean_anomaly_deg=725.5,
        mean_motion_rev_day=15.2,
        bstar=-1.234e-5,
        ndot_rev_day2=-0.00001234,
    )
    assert validate_tle(l1, l2) == []
    sat = Satrec.twoline2rv(l1, l2)
    assert sat.satnum == 12345 and sat.epochyr == 24
    assert sat.epochdays == pytest.approx(
        60.0 + (18.5 * 3600 + 15.25) / 86400, abs=1e-8
    )
    assert np.degrees(sat.nodeo) == pytest.approx(350.0)
    assert np.degrees(sat.argpo) == pytest.approx(0.0, abs=1e-9)  # 360 wraps to 0
    assert np.degrees(sat.mo) == pytest.approx(5.5)
    assert sat.ecco == pytest.approx(0.0012345)
    assert sat.bstar == pytest.approx(-1.234e-5)
    assert sat.ndot * 1440**2 / (2 * np.pi) == pytest.approx(-0.00001234, rel=1e-6)
    # the exporter of the sgp4 package writes the same element fields
    e1, e2 = exporter.export_tle(sat)
    assert e2[:63] == l2[:63] and e1[18:32] == l1[18:32]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"epoch": datetime(2024, 2, 29)}, "epoch=2024-02-29T00:00:00 has no time"),
        ({"inclination_deg": float("nan")}, "inclination_deg=nan"),
        ({"inclination_deg": 181.0}, "inclination_deg=181.0 is outside"),
        ({"raan_deg": float("inf")}, "raan_deg=inf"),
    ],
)
def test_format_tle_refuses_what_a_tle_cannot_hold(change, named):
    elements = dict(
        catalog_number=1, epoch=datetime(2024, 2, 29, tzinfo=UTC),
        inclination_deg=53.0, raan_deg=0.0, eccentricity=0.0,
        arg_perigee_deg=0.0, mean_anomaly_deg=0.0, mean_motion_rev_day=15.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match=named):
        format_tle(**{**elements, **change})


def _omm_records(tle_dir, n=5):
    entries = load_elements(tle_dir / "stations_2024-11.txt").entries[:n]
    return entries, [exporter.export_omm(e.satrec, e.name) for e in entries]


def _same_orbit(a, b):
    jd = np.array([a.jdsatepoch + 0.5])
    fr = np.array([a.jdsatepochF])
    _, ra, _ = a.sgp4_array(jd, fr)
    _, rb, _ = b.sgp4_array(jd, fr)
    assert np.linalg.norm(ra - rb) < 1e-3  # km


def test_omm_json_csv_and_xml_load_the_same_orbits(tle_dir, tmp_path):
    entries, records = _omm_records(tle_dir)
    (tmp_path / "a.json").write_text(json.dumps(records))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    (tmp_path / "a.csv").write_text(buf.getvalue())
    (tmp_path / "a.xml").write_text(_omm_xml(records))
    for name in ("a.json", "a.csv", "a.xml"):
        load = load_elements(tmp_path / name)
        assert load.problems == [], name
        assert [e.name for e in load.entries] == [e.name for e in entries]
        for ours, ref in zip(load.entries, entries, strict=True):
            _same_orbit(ours.satrec, ref.satrec)
            assert validate_tle(ours.line1, ours.line2) == []


def test_omm_record_with_a_bad_epoch_year_is_reported(tle_dir):
    _, records = _omm_records(tle_dir, 3)
    records[1] = dict(records[1], EPOCH="2061-01-01T00:00:00.000000")
    records[2] = {k: v for k, v in records[2].items() if k != "MEAN_MOTION"}
    load = read_omm_text(json.dumps(records), "json")
    assert len(load.entries) == 1
    messages = [p.message for p in load.problems]
    assert "EPOCH year 2061 is outside 1957-2056" in messages[0]
    assert "lacks MEAN_MOTION" in messages[1]


def test_omm_json_that_is_not_a_list_of_records_is_reported(tle_dir):
    assert "holds a int, expected a list" in str(read_omm_text("5", "json").problems[0])
    _, records = _omm_records(tle_dir, 1)
    load = read_omm_text(json.dumps([7, records[0], "x"]), "json")
    assert len(load.entries) == 1
    messages = [str(p) for p in load.problems]
    assert "OMM record 1 is 7, expected an object" in messages[0]
    assert "OMM record 3 is 'x', expected an object" in messages[1]


def _omm_xml(records) -> str:
    metadata_keys = ("OBJECT_NAME", "OBJECT_ID", "CENTER_NAME", "REF_FRAME",
                     "TIME_SYSTEM", "MEAN_ELEMENT_THEORY")  # fmt: skip
    mean_keys = ("EPOCH", "MEAN_MOTION", "ECCENTRICITY", "INCLINATION",
                 "RA_OF_ASC_NODE", "ARG_OF_PERICENTER", "MEAN_ANOMALY")  # fmt: skip
    root = ET.Element("ndm")
    for rec in records:
        segment = ET.SubElement(ET.SubElement(ET.SubElement(root, "omm"), "body"),
                                "segment")  # fmt: skip
        meta = ET.SubElement(segment, "metadata")
        data = ET.SubElement(segment, "data")
        mean = ET.SubElement(data, "meanElements")
        tle = ET.SubElement(data, "tleParameters")
        for key, value in rec.items():
            parent = meta if key in metadata_keys else mean if key in mean_keys else tle
            ET.SubElement(parent, key).text = str(value)
    return ET.tostring(root, encoding="unicode")
