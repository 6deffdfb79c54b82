"""The agent's SQLite outbox: durable before send, bounded, expiring."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from agent._outbox import Outbox, OutboxFull

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_put_then_ack_removes_exactly_that_entry(tmp_path):
    with Outbox(tmp_path / "o.sqlite") as box:
        s0, _ = box.put(0, 3, b"a" * 10, now_s=0.0)
        s1, _ = box.put(1, 3, b"b" * 10, now_s=1.0)
        assert (s0, s1) == (0, 1)
        assert box.ack(0, s0) is True
        assert box.ack(0, s0) is False  # a second ACK finds nothing
        assert [(e.round, e.seq, e.body) for e in box.pending()] == [(1, 1, b"b" * 10)]
        assert box.counters()["acked"] == 1


def test_entries_and_seq_survive_reopening(tmp_path):
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        box.put(4, 3, b"x", now_s=0.0)
        box.mark_sent(4, 0, now_s=1.0)
    with Outbox(path) as box:
        (entry,) = box.pending()
        assert (entry.round, entry.seq, entry.attempts, entry.last_sent_s) == (
            4,
            0,
            1,
            1.0,
        )
        seq, _ = box.put(5, 3, b"y", now_s=2.0)
        assert seq == 1  # never reuses a sequence number


def test_entry_survives_kill_9_right_after_put(tmp_path):
    path = tmp_path / "o.sqlite"
    child = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {REPO!r})
        from agent._outbox import Outbox
        box = Outbox({str(path)!r})
        box.put(7, 3, b"precious", now_s=0.0)
        print("stored", flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.strip() == "stored"
    with Outbox(path) as box:
        assert [(e.round, e.body) for e in box.pending()] == [(7, b"precious")]


def test_full_by_count_drops_oldest_round_first_and_counts(tmp_path):
    with Outbox(tmp_path / "o.sqlite", max_entries=3) as box:
        box.put(5, 3, b"r5", now_s=0.0)
        box.put(2, 3, b"r2", now_s=0.0)  # an older round stored later
        box.put(9, 3, b"r9", now_s=0.0)
        seq, dropped = box.put(6, 3, b"r6", now_s=0.0)
        assert dropped == [(2, 1)]
        assert sorted(e.round for e in box.pending()) == [5, 6, 9]
        assert box.counters()["dropped_full"] == 1


def test_full_by_bytes_drops_as_many_old_entries_as_needed(tmp_path):
    with Outbox(tmp_path / "o.sqlite", max_bytes=100) as box:
        for r in range(4):
            box.put(r, 3, bytes(25), now_s=0.0)
        _, dropped = box.put(10, 3, bytes(60), now_s=0.0)
        assert dropped == [(0, 0), (1, 1), (2, 2)]
        assert box.nbytes == 85
        assert box.counters()["dropped_full"] == 3


def test_update_larger_than_the_whole_budget_is_refused(tmp_path):
    with Outbox(tmp_path / "o.sqlite", max_bytes=10) as box:
        box.put(0, 3, bytes(5), now_s=0.0)
        with pytest.raises(OutboxFull, match="11 bytes cannot fit.*max_bytes=10"):
            box.put(1, 3, bytes(11), now_s=0.0)
        assert len(box) == 1  # nothing dropped for an update that cannot fit


def test_entries_expire_on_the_given_clock(tmp_path):
    with Outbox(tmp_path / "o.sqlite", expiry_s=100.0) as box:
        box.put(0, 3, b"old", now_s=0.0)
        box.put(1, 3, b"new", now_s=50.0)
        assert box.expire(now_s=99.9) == []
        assert box.expire(now_s=100.0) == [(0, 0)]
        assert [e.body for e in box.pending()] == [b"new"]
        assert box.counters()["expired"] == 1


def test_meta_values_are_durable(tmp_path):
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        assert box.get_meta("last_round", -1) == -1
        box.set_meta("last_round", 12)
    with Outbox(path) as box:
        assert box.get_meta("last_round") == 12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_entries": 0}, "max_entries=0"),
        ({"max_bytes": 0}, "max_bytes=0"),
        ({"expiry_s": 0.0}, "expiry_s=0.0"),
    ],
)
def test_bad_settings_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Outbox(tmp_path / "o.sqlite", **kwargs)
