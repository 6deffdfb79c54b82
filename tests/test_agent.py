"""The agent loop against a real daemon on loopback: link state, reboot, reconnect."""

import threading
import time

import numpy as np
import pytest

from agent._agent import Agent, make_compressor, make_trainer
from agent._config import parse_agent_config
from ground._config import parse_ground_config
from ground._daemon import GroundDaemon
from tests.fl_support import (
    T_WAIT_S,
    LeastSquaresTrainer,
    agent_config,
    ground_config,
)

pytestmark = pytest.mark.timeout(120)


def _wait(condition, timeout_s: float = T_WAIT_S) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def _daemon(tmp_path, **sections) -> GroundDaemon:
    raw = ground_config(tmp_path, **sections)
    return GroundDaemon(parse_ground_config(raw, tmp_path)).start()


class LinkCutDuringTraining(LeastSquaresTrainer):
    """Cuts the link while it trains: the pass ends before the upload."""

    def __init__(self, node_id: str, link: threading.Event) -> None:
        super().__init__(node_id)
        self.link = link
        self.calls = 0

    def train(self, weights, round_index):
        self.calls += 1
        self.link.clear()
        return super().train(weights, round_index)


def test_update_waits_in_the_outbox_while_the_link_is_down(tmp_path):
    d = _daemon(tmp_path, rounds={"min_participants": 1, "deadline_s": 3600})
    link = threading.Event()
    link.set()
    config = parse_agent_config(
        agent_config(tmp_path, "sat-1", d.endpoint, agent={"max_rounds": 1}), tmp_path
    )
    trainer = LinkCutDuringTraining("sat-1", link)
    agent = Agent(config, trainer=trainer, link_up=link.is_set).start()
    try:
        _wait(lambda: trainer.calls == 1)
        time.sleep(0.5)
        assert len(agent.outbox) == 1  # stored, durably, and not sent
        assert d.metrics.value("orbitfl_updates_accepted_total") == 0
        link.set()
        assert agent.join(T_WAIT_S) and agent.error is None
        assert d.metrics.value("orbitfl_updates_accepted_total") == 1
        assert agent.events == [("ack", 0, agent.events[0][2])]
    finally:
        agent.stop()
        d.stop()


def test_rebooted_agent_resends_what_was_not_acked_and_does_not_retrain(tmp_path):
    d = _daemon(tmp_path, rounds={"min_participants": 1, "deadline_s": 3600})
    link = threading.Event()
    link.set()
    raw = agent_config(tmp_path, "sat-1", d.endpoint, agent={"max_rounds": 1})
    trainer = LinkCutDuringTraining("sat-1", link)
    first = Agent(parse_agent_config(raw, tmp_path), trainer=trainer,
                  link_up=link.is_set).start()  # fmt: skip
    try:
        _wait(lambda: trainer.calls == 1)
        time.sleep(0.2)
        first.stop()  # the "crash": the update was never sent
        assert d.metrics.value("orbitfl_updates_accepted_total") == 0

        again = LinkCutDuringTraining("sat-1", threading.Event())
        second = Agent(
            parse_agent_config(raw, tmp_path), trainer=again, link_up=lambda: True
        ).start()
        assert second.join(T_WAIT_S) and second.error is None
        assert again.calls == 0  # round 0 was already trained before the reboot
        assert d.metrics.value("orbitfl_updates_accepted_total") == 1
        _wait(lambda: d.rounds_closed == 1)
        # The model moved by exactly that one update.
        expected = LeastSquaresTrainer("sat-1").train(
            LeastSquaresTrainer("sat-1").initial_weights(), 0
        )
        np.testing.assert_allclose(d.model()["w"], expected.delta["w"], rtol=1e-6)
    finally:
        d.stop()


class GatedTrainer(LeastSquaresTrainer):
    """Blocks round 1's training until the test opens the gate."""

    def __init__(self, node_id: str, gate: threading.Event) -> None:
        super().__init__(node_id)
        self.gate = gate
        self.rounds: list[int] = []

    def train(self, weights, round_index):
        self.rounds.append(round_index)
        if round_index == 1:
            assert self.gate.wait(T_WAIT_S)
        return super().train(weights, round_index)


def test_agent_reconnects_after_the_ground_restarts(tmp_path):
    sections = {"rounds": {"min_participants": 1, "deadline_s": 3600}}
    d = _daemon(tmp_path, **sections)
    port = d.endpoint.rsplit(":", 1)[1]
    gate = threading.Event()
    trainer = GatedTrainer("sat-1", gate)
    raw = agent_config(tmp_path, "sat-1", d.endpoint, agent={"max_rounds": 2})
    agent = Agent(parse_agent_config(raw, tmp_path), trainer=trainer).start()
    try:
        _wait(lambda: trainer.rounds == [0, 1])  # round 0 ACKed, round 1 training
        d.stop()
        time.sleep(0.3)
        d = _daemon(tmp_path, ground={"bind": f"tcp://127.0.0.1:{port}"}, **sections)
        assert d.round == 1  # resumed from the checkpoint
        gate.set()
        assert agent.join(T_WAIT_S) and agent.error is None
        _wait(lambda: d.rounds_closed == 2)
        assert [e[:2] for e in agent.events] == [("ack", 0), ("ack", 1)]
    finally:
        gate.set()
        agent.stop()
        d.stop()


class WrongShapeTrainer(LeastSquaresTrainer):
    def train(self, weights, round_index):
        result = super().train(weights, round_index)
        result.delta["w"] = np.zeros(result.delta["w"].size + 1, np.float32)
        return result


def test_nacked_update_is_dropped_from_the_outbox_and_logged(tmp_path, caplog):
    d = _daemon(tmp_path)
    raw = agent_config(tmp_path, "sat-1", d.endpoint, agent={"max_rounds": 1})
    agent = Agent(parse_agent_config(raw, tmp_path), trainer=WrongShapeTrainer("x"))
    try:
        with caplog.at_level("WARNING", logger="agent._agent"):
            agent.start()
            assert agent.join(T_WAIT_S) and agent.error is None
        assert agent.events[0][0] == "nack"
        assert any("shape" in r.getMessage() for r in caplog.records)
        assert d.metrics.value("orbitfl_rejected_total", reason="shape") == 1
    finally:
        agent.stop()
        d.stop()


def test_training_failure_skips_the_round_without_killing_the_agent(tmp_path):
    d = _daemon(tmp_path, model={"zeros": {"w": [3], "b": [1]}})  # trainer needs 8
    raw = agent_config(tmp_path, "sat-1", d.endpoint, agent={"max_rounds": 1})
    agent = Agent(parse_agent_config(raw, tmp_path)).start()
    try:
        time.sleep(1.0)
        assert agent.error is None and agent._thread.is_alive()
        assert len(agent.outbox) == 0
    finally:
        agent.stop()
        d.stop()


def test_make_trainer_and_compressor_name_bad_settings():
    with pytest.raises(ValueError, match="kind = 'torch'"):
        make_trainer({"kind": "torch"})
    with pytest.raises(ValueError, match="module:callable"):
        make_trainer({"kind": "factory", "factory": "nocolon"})
    assert make_compressor("sat-1", {}) is None
    with pytest.raises(ValueError, match=r"\[compression\]"):
        make_compressor("sat-1", {"method": "topk", "sparsity": 2.0})
    client = make_compressor("sat-1", {"method": "topk", "sparsity": 0.9})
    assert client.config.sparsity == 0.9


def test_orbit_section_drives_the_link_from_predicted_contacts(tmp_path, tle_dir):
    from datetime import UTC, datetime

    from agent._agent import make_link_up
    from agent._clock import SimClock

    lines = (tle_dir / "noaa_2022-02.txt").read_text().splitlines()
    line1, line2 = lines[1].strip(), lines[2].strip()
    svalbard = {"name": "svalbard", "lat_deg": 78.23, "lon_deg": 15.39,
                "alt_km": 0.5, "min_elevation_deg": 5.0}  # fmt: skip
    raw = agent_config(tmp_path, "noaa-1", "tcp://127.0.0.1:1")
    raw["orbit"] = {"tle_line1": line1, "tle_line2": line2, "stations": [svalbard]}
    config = parse_agent_config(raw, tmp_path)
    start = datetime(2022, 2, 4, 12, 0, tzinfo=UTC)
    predictor_link = make_link_up(config, SimClock(start, time.time(), 1.0))
    assert predictor_link() in (True, False)

    from agent._contacts import ContactPredictor
    from agent._geo import Position
    from agent._stations import GroundStation

    station = GroundStation("svalbard", Position(78.23, 15.39, 0.5), 1.0, 1.0, 5.0)
    windows = ContactPredictor(line1, line2, [station]).windows(start, 12.0)
    assert len(windows) >= 3, "a polar orbiter passes Svalbard often in 12 h"
    w0, w1 = windows[1], windows[2]  # whole windows, not one cut by `start`
    inside = w0.start_time + (w0.end_time - w0.start_time) / 2
    outside = w0.end_time + (w1.start_time - w0.end_time) / 2
    assert w1.start_time > w0.end_time
    # A clock frozen at each instant (speed-up ~0) asks the agent's link.
    for when, expected in ((inside, True), (outside, False)):
        frozen = SimClock(when, time.time(), 1e-9)
        assert make_link_up(config, frozen)() is expected


def test_update_held_past_its_expiry_is_dropped_and_logged(tmp_path, caplog):
    d = _daemon(tmp_path, rounds={"min_participants": 1, "deadline_s": 3600})
    link = threading.Event()
    link.set()
    raw = agent_config(tmp_path, "sat-1", d.endpoint, outbox={"expiry_s": 0.5})
    trainer = LinkCutDuringTraining("sat-1", link)
    agent = Agent(parse_agent_config(raw, tmp_path), trainer=trainer,
                  link_up=link.is_set)  # fmt: skip
    try:
        with caplog.at_level("WARNING", logger="agent._agent"):
            agent.start()
            _wait(lambda: trainer.calls == 1)
            _wait(lambda: agent.outbox.counters()["expired"] == 1, timeout_s=5.0)
            _wait(lambda: any("expired" in r.getMessage() for r in caplog.records))
        assert len(agent.outbox) == 0
        assert d.metrics.value("orbitfl_updates_accepted_total") == 0
    finally:
        agent.stop()
        d.stop()


def test_agents_sharing_one_credit_all_get_their_updates_in(tmp_path):
    # One grant at a time: the three agents send one after the other, each
    # when the update before it has arrived, and every round completes.
    d = _daemon(
        tmp_path,
        ground={"max_inflight": 1},
        rounds={"min_participants": 3, "deadline_s": 3600},
    )
    outstanding = []
    grant = d._grant

    def counting_grant(identity, of):
        grant(identity, of)
        outstanding.append(len(d._grants))

    d._grant = counting_grant
    agents = []
    try:
        for name in ("sat-1", "sat-2", "sat-3"):
            raw = agent_config(tmp_path, name, d.endpoint, agent={"max_rounds": 2})
            agents.append(Agent(parse_agent_config(raw, tmp_path)).start())
        for agent in agents:
            assert agent.join(T_WAIT_S) and agent.error is None
            assert [e[0] for e in agent.events] == ["ack", "ack"]
        _wait(lambda: d.rounds_closed >= 2)
        assert d.metrics.value("orbitfl_updates_accepted_total") == 6
        assert d.metrics.value("orbitfl_rejected_total", reason="already_reported") == 0
        assert len(outstanding) >= 6 and max(outstanding) == 1
    finally:
        for agent in agents:
            agent.stop()
        d.stop()
