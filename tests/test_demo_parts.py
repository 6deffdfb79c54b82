"""The demo's parts without processes: data split, inputs, contacts, report."""

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from agent._demo_orbit import contact_windows, station_from_dict, station_to_dict
from agent._walker import walker_tles
from ground._data import dirichlet_split, prepare_data, stratified_split
from ground._demo_inputs import (
    DEFAULT_STATIONS,
    DemoError,
    DemoOptions,
    check_options,
    load_stations_file,
    load_tle_file,
)
from ground._report import ContactRecord, RunSummary, build_report, write_report

EPOCH = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_dirichlet_split_is_a_partition_and_skews_labels():
    y = np.repeat(np.arange(10), 100)
    parts = dirichlet_split(y, 8, alpha=0.5, seed=3, min_samples=10)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(y)))  # each sample once
    assert min(len(p) for p in parts) >= 10
    # Non-IID: with alpha 0.5 a typical shard's top class is far above 10%.
    top_share = [np.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    assert np.median(top_share) > 0.2
    iid = dirichlet_split(y, 8, alpha=1000.0, seed=3)
    iid_share = [np.bincount(y[p], minlength=10).max() / len(p) for p in iid]
    assert max(iid_share) < 0.2


def test_dirichlet_split_refuses_too_little_data():
    with pytest.raises(ValueError, match="cannot give 8 satellites 10 samples"):
        dirichlet_split(np.zeros(50, int), 8, alpha=0.5, seed=0, min_samples=10)


def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.repeat(np.arange(5), [2, 10, 30, 7, 51])
    train, test = stratified_split(y, 0.25, seed=0)
    assert set(train) | set(test) == set(range(len(y)))
    assert not set(train) & set(test)
    assert set(y[test]) == set(y[train]) == set(range(5))


def test_prepare_data_writes_digits_shards(tmp_path):
    split = prepare_data(tmp_path, 4, seed=1, satellite_ids=["a", "b", "c", "d"])
    assert [p.name for p in split.shard_paths] == ["a.npz", "b.npz", "c.npz", "d.npz"]
    assert split.num_classes == 10 and split.input_dim == 64
    total = sum(split.shard_sizes) + len(split.y_test)
    assert total == 1797  # the whole digits set, nothing dropped or duplicated
    with np.load(split.shard_paths[0]) as shard:
        assert int(shard["num_classes"]) == 10
        assert shard["X"].dtype == np.float32 and 0.0 <= shard["X"].max() <= 1.0


def test_prepare_data_standardises_user_data(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, (300, 4))
    X[:, 3] = 7.0  # a constant feature must not divide by zero
    y = rng.integers(0, 3, 300)
    np.savez(tmp_path / "mine.npz", X=X, y=y)
    split = prepare_data(tmp_path / "out", 3, data_path=tmp_path / "mine.npz")
    assert np.all(np.isfinite(split.X_test))
    shards = np.concatenate([np.load(p)["X"] for p in split.shard_paths])
    np.testing.assert_allclose(shards[:, :3].mean(axis=0), 0.0, atol=1e-5)


def test_stations_round_trip_and_file(tmp_path):
    for s in DEFAULT_STATIONS:
        assert station_from_dict(station_to_dict(s)) == s
    path = tmp_path / "st.csv"
    path.write_text("# name,lat,lon,alt,down,up,mask\nHome,48.1,11.6,0.5,50,2,15\n")
    (home,) = load_stations_file(path)
    assert (home.name, home.downlink_mbps, home.uplink_mbps) == ("Home", 50.0, 2.0)
    assert home.min_elevation_deg == 15.0
    path.write_text("Home,48.1,eleven,0.5,50,2\nAway,1,2\n")
    with pytest.raises(DemoError, match="line 1 .*line 2"):
        load_stations_file(path)


def test_tle_file_errors_are_one_line(tmp_path):
    with pytest.raises(DemoError, match="cannot read TLE file"):
        load_tle_file(tmp_path / "absent.txt")
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\nworld\n")
    with pytest.raises(DemoError, match="no usable element set"):
        load_tle_file(junk)


def test_real_tle_file_loads(tle_dir):
    tles = load_tle_file(tle_dir / "noaa_2022-02.txt")
    assert len(tles) > 5
    assert all(l1.startswith("1 ") and l2.startswith("2 ") for _, l1, l2 in tles)


def test_zero_agents_is_refused(tmp_path):
    with pytest.raises(DemoError, match="--agents 0"):
        check_options(DemoOptions(out=tmp_path, agents=0))


def test_walker_demo_constellation_sees_the_polar_stations_every_few_hours():
    tles = walker_tles(4, 2, 1, 550.0, 97.6, EPOCH)
    windows = contact_windows(tles, DEFAULT_STATIONS, EPOCH, 12 * 3600.0)
    for name, _, _ in tles:
        mine = [w for w in windows if w.satellite == name]
        assert len(mine) >= 6, name
        gaps_h = [
            (b.start - a.end).total_seconds() / 3600.0
            for a, b in zip(mine, mine[1:], strict=False)
        ]
        assert max(gaps_h) < 6.0
        durations_s = [w.duration_s for w in mine]
        assert max(durations_s) < 900.0  # a LEO pass lasts minutes, not more
        assert np.median(durations_s) > 180.0


def _summary(label: str, curve, sent: int) -> RunSummary:
    return RunSummary(
        label=label,
        strategy="fedbuff",
        compression="x",
        num_satellites=2,
        accuracy_curve=curve,
        rounds=len(curve),
        bytes_sent=sent,
        dense_bytes_equivalent=10 * sent,
        bytes_per_round=[sent // 2, sent // 2],
        sim_hours=4.0,
        contacts=[ContactRecord("s1", "Svalbard", 0.5, 0.6, True)],
    )


def test_report_has_the_documented_fields(tmp_path):
    run = _summary("orbitfl", [(0.0, 0.1, 0), (1.0, 0.86, 1), (2.0, 0.91, 2)], 100)
    base = _summary("baseline", [(0.0, 0.1, 0), (3.0, 0.9, 1)], 1000)
    paths = write_report(tmp_path, [run, base], {"agents": 2})
    report = json.loads(paths["report"].read_text())
    for key in (
        "final_accuracy",
        "accuracy_curve",
        "rounds",
        "updates_aggregated",
        "bytes_sent",
        "dense_bytes_equivalent",
        "compression_ratio",
        "updates_lost",
        "lost_satellites",
        "contacts_used",
        "contacts_predicted",
        "hours_to_85",
        "bytes_per_round",
    ):
        assert key in report["run"], key
    assert report["run"]["compression_ratio"] == 10.0
    assert report["run"]["hours_to_85"] == 1.0
    cmp = report["comparison"]
    assert cmp["bytes_fraction_of_baseline"] == pytest.approx(0.1)
    assert cmp["hours_to_85_fraction_of_baseline"] == pytest.approx(1.0 / 3.0)
    assert cmp["accuracy_difference_points"] == pytest.approx(1.0)
    for name in ("accuracy", "contacts", "bytes_per_round"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_accuracy_has_no_nan(tmp_path):
    empty = RunSummary("orbitfl", "fedavg", "dense", 1)
    report = build_report([empty], {})
    assert report["run"]["final_accuracy"] is None
    assert report["run"]["compression_ratio"] is None
    json.dumps(report, allow_nan=False)
