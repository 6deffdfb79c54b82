"""The daemon's journal and checkpoints: torn records, release, atomic files."""

import numpy as np
import pytest

from ground._journal import (
    Checkpoint,
    Journal,
    JournalRow,
    read_checkpoint,
    write_checkpoint,
)


def _row(agent: str, seq: int) -> JournalRow:
    return JournalRow(agent, 0, seq, 10, 0, b"body-%d" % seq)


def test_rows_replay_in_order_and_a_torn_tail_is_cut(tmp_path):
    j = Journal(tmp_path)
    j.append([(_row("a", 1), 0), (_row("b", 2), 0)])
    j.append([(_row("c", 3), 0)])
    j.close()
    log = tmp_path / "journal-0.log"
    log.write_bytes(log.read_bytes()[:-3])  # the last record torn by a crash
    j = Journal(tmp_path)
    assert [r.agent for r in j.replay(0)] == ["a", "b"]
    j.append([(_row("d", 4), 0)])  # lands after the intact records
    assert [r.seq for r in j.replay(0)] == [1, 2, 4]
    assert j.seen() == {("a", 0, 1), ("b", 0, 2), ("d", 0, 4)}


def test_release_keeps_the_keys_and_drops_the_bodies(tmp_path):
    j = Journal(tmp_path)
    j.append([(_row("a", 1), 0)])
    j.append([(_row("b", 2), 1)])
    j.release(0)
    assert not (tmp_path / "journal-0.log").exists()
    assert list(j.replay(0)) == []
    assert [r.agent for r in j.replay(1)] == ["b"]
    j.close()
    assert Journal(tmp_path).seen() == {("a", 0, 1), ("b", 0, 2)}


def test_release_keeps_keys_accepted_before_a_restart_in_the_same_round(tmp_path):
    # Found by the hardware-in-the-loop chaos run: a daemon killed mid-round
    # and restarted forgot, when the round closed, the keys its first life had
    # accepted, so a late resend could be aggregated twice (FEDASYNC/FEDBUFF).
    j = Journal(tmp_path)
    j.append([(JournalRow("a", 3, 1, 1, 0, b"x"), 3)])
    j.close()  # kill -9 and restart
    j = Journal(tmp_path)
    j.append([(JournalRow("b", 3, 2, 1, 0, b"y"), 3)])
    j.release(3)
    j.close()
    assert Journal(tmp_path).seen() == {("a", 3, 1), ("b", 3, 2)}


def test_release_files_runs_beside_writes_of_the_next_round(tmp_path):
    j = Journal(tmp_path)
    j.append([(_row("a", 1), 0)])
    keys = j.take_keys(0)
    j.append([(_row("b", 2), 1)])  # the next round, while round 0 is released
    j.release_files(0, keys)
    assert not (tmp_path / "journal-0.log").exists()
    assert [r.agent for r in j.replay(1)] == ["b"]
    j.close()
    assert Journal(tmp_path).seen() == {("a", 0, 1), ("b", 0, 2)}


def test_logs_newer_than_the_checkpoint_are_dropped_with_their_keys(tmp_path):
    j = Journal(tmp_path)
    j.append([(_row("a", 1), 0), (_row("b", 2), 1), (_row("c", 3), 2)])
    assert j.drop_after(0) == [1, 2]
    j.close()
    j = Journal(tmp_path)
    assert j.seen() == {("a", 0, 1)}  # b and c were never ACKed: not duplicates
    assert [r.agent for r in j.replay(0)] == ["a"]


def test_corrupted_record_stops_replay_there(tmp_path):
    j = Journal(tmp_path)
    j.append([(_row("a", 1), 0), (_row("b", 2), 0)])
    j.close()
    log = tmp_path / "journal-0.log"
    data = bytearray(log.read_bytes())
    data[-1] ^= 0xFF  # crc mismatch in the second record
    log.write_bytes(bytes(data))
    assert [r.agent for r in Journal(tmp_path).replay(0)] == ["a"]


@pytest.mark.parametrize("n", [0, 1, 255, 256, 65535, 65536, 300_000])
def test_checkpoint_round_trips_at_every_bin_header_size(tmp_path, n):
    cp = Checkpoint(
        3,
        7,
        3,
        12.5,
        {"w": np.arange(n, dtype=np.float32), "b": np.ones((2, 3))},
        {"momentum/w": np.full(n, 0.5, np.float32)},
    )
    path = tmp_path / "checkpoint.msgpack"
    assert write_checkpoint(path, cp) == path.stat().st_size
    got = read_checkpoint(path)
    assert (got.round, got.version, got.rounds_closed, got.round_opened_s) == (
        3, 7, 3, 12.5,
    )  # fmt: skip
    np.testing.assert_array_equal(got.model["w"], cp.model["w"])
    np.testing.assert_array_equal(got.model["b"], cp.model["b"])
    np.testing.assert_array_equal(
        got.optimizer_state["momentum/w"], cp.optimizer_state["momentum/w"]
    )
    assert not (tmp_path / "checkpoint.msgpack.tmp").exists()


def test_unreadable_checkpoint_says_what_to_do(tmp_path):
    path = tmp_path / "checkpoint.msgpack"
    path.write_bytes(b"\x81\xa6format\x09")
    with pytest.raises(ValueError, match="move it away"):
        read_checkpoint(path)
    assert read_checkpoint(tmp_path / "none") is None
