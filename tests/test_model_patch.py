"""MODEL patches: the changed coordinates instead of the full weights."""

import time

import msgpack
import numpy as np
import pytest
import zmq

from agent import _wire as w
from agent._agent import Agent
from agent._arrays import pack_array
from agent._config import parse_agent_config
from agent._model_patch import apply_patch, changed_indices, model_crc32
from agent._trainer import TrainResult
from ground._model_patches import PatchLog
from tests.fl_support import T_WAIT_S, agent_config
from tests.test_daemon import Client, start_daemon

T0 = 1_700_000_000.0
N = 4096  # big enough that a few changed coordinates make a small patch


def test_changed_indices_compare_bits():
    old = np.array([0.0, 1.0, 2.0, -0.0, 5.0], np.float32)
    new = np.array([0.0, 1.5, 2.0, 0.0, 5.0], np.float32)
    idx = changed_indices(old, new)
    assert idx.dtype == np.uint32
    assert idx.tolist() == [1, 3]  # -0.0 -> 0.0 is a change of bits


def test_changed_indices_across_chunks():
    rng = np.random.default_rng(1)
    old = rng.standard_normal(3 * (1 << 20) + 7).astype(np.float32)
    new = old.copy()
    where = np.sort(rng.choice(old.size, 500, replace=False))
    new[where] += 1.0
    assert np.array_equal(changed_indices(old, new), where)


def test_apply_patch_gives_the_new_model_bit_for_bit():
    rng = np.random.default_rng(2)
    old = {"a": rng.standard_normal((64, 8)).astype(np.float32), "b": np.zeros(3)}
    new = {k: v.copy() for k, v in old.items()}
    new["a"][3, 4] = -0.0
    new["a"][60, 1] = 7.25
    patch = {
        k: (idx, new[k].reshape(-1)[idx])
        for k in new
        if (idx := changed_indices(old[k], new[k])).size
    }
    got = apply_patch(old, patch, model_crc32(new))
    for k in new:
        assert got[k].tobytes() == new[k].tobytes()
    assert old["a"][60, 1] != 7.25  # the held model is left as it was


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"zz": (np.array([0], np.uint32), np.ones(1, np.float32))}, "lacks"),
        ({"a": (np.array([10], np.uint32), np.ones(1, np.float32))}, "index 10"),
        ({"a": (np.array([2, 1], np.uint32), np.ones(2, np.float32))}, "increasing"),
        ({"a": (np.array([0], np.uint32), np.ones(1, np.float64))}, "float64"),
    ],
)
def test_apply_patch_refuses_a_patch_that_does_not_fit(patch, match):
    held = {"a": np.zeros(10, np.float32)}
    with pytest.raises(ValueError, match=match):
        apply_patch(held, patch, 0)


def test_apply_patch_refuses_a_model_that_is_not_the_base():
    held = {"a": np.zeros(10, np.float32)}
    target = {"a": np.zeros(10, np.float32)}
    target["a"][0] = 1.0
    patch = {"a": (np.array([0], np.uint32), np.ones(1, np.float32))}
    held["a"][5] = 3.0  # the agent's model differs from the ground's idea of it
    with pytest.raises(ValueError, match="CRC-32"):
        apply_patch(held, patch, model_crc32(target))


def test_model_crc32_sees_names_shapes_and_dtypes():
    a = np.zeros(4, np.float32)
    base = model_crc32({"a": a})
    assert model_crc32({"b": a}) != base
    assert model_crc32({"a": a.reshape(2, 2)}) != base
    assert model_crc32({"a": a.view(np.int32)}) != base


def _models(*values):
    out = []
    for v in values:
        m = {"w": np.zeros(N, np.float32)}
        for i, x in v.items():
            m["w"][i] = x
        out.append(m)
    return out


def test_patch_log_unions_the_steps_since_a_version():
    m0, m1, m2 = _models({}, {5: 1.0}, {5: 2.0, 9: 1.0})
    log = PatchLog()
    log.record(None, -1, m0, 0)
    log.record(m0, 0, m1, 1)
    log.record(m1, 1, m2, 2)
    assert log.changed_since(2) == {}
    assert log.changed_since(1)["w"].tolist() == [5, 9]
    assert log.changed_since(0)["w"].tolist() == [5, 9]
    assert log.changed_since(7) is None


def test_patch_log_forgets_a_step_too_large_to_keep():
    m0 = _models({})[0]
    m1 = {"w": np.ones(N, np.float32)}  # every coordinate changed
    m2 = {"w": m1["w"].copy()}
    m2["w"][0] = 5.0
    log = PatchLog(max_fraction=0.25)
    log.record(None, -1, m0, 0)
    log.record(m0, 0, m1, 1)
    assert log.changed_since(0) is None
    log.record(m1, 1, m2, 2)
    assert log.changed_since(1)["w"].tolist() == [0]
    assert log.changed_since(0) is None


def test_patch_log_drops_the_oldest_steps_beyond_its_budget():
    log = PatchLog(max_fraction=0.25)
    models = [{"w": np.zeros(N, np.float32)}]
    log.record(None, -1, models[0], 0)
    for v in range(1, 6):  # each step changes N / 8 coordinates
        m = {"w": models[-1]["w"].copy()}
        m["w"][(v - 1) * N // 8 : v * N // 8] = v
        log.record(models[-1], v - 1, m, v)
        models.append(m)
    assert log.changed_since(3)["w"].size == N // 4
    assert log.changed_since(1) is None  # its steps were dropped


# -------------------------------------------------------------- on the wire


def _golden_patch() -> w.Message:
    return w.model_patch(
        "ground",
        1,
        9,
        T0,
        version=2,
        deadline_s=T0 + 600,
        base_version=1,
        patch={"w": (np.array([2], np.uint32), np.array([4.0], np.float32))},
        crc32=0xDEADBEEF,
    )


# The body is bin8 of 0x5b = 91 bytes, a map of five (0x85); "patch" maps
# "w" to [indices, values], each array [dtype, shape, bytes]: "<u4" [1]
# 02000000 and "<f4" [1] 00008040; crc32 is a uint32 (0xce).
GOLDEN_PATCH = (
    "970102a667726f756e640109cb41d954fc40000000c45b85a776657273696f6e02aa6465"
    "61646c696e655f73cb41d954fcd6000000ac626173655f76657273696f6e01a5706174"
    "636881a1779293a33c75349101c4040200000093a33c66349101c40400008040a56372"
    "633332ced"
    "eadbeef"
)


def test_model_patch_golden_bytes():
    assert w.encode(_golden_patch()).hex() == GOLDEN_PATCH
    msg = w.decode(bytes.fromhex(GOLDEN_PATCH))
    assert msg.body["base_version"] == 1 and msg.body["crc32"] == 0xDEADBEEF
    idx, values = msg.body["patch"]["w"]
    assert idx.tolist() == [2] and values.tolist() == [4.0]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda b: b.update(weights={}), "exactly one"),
        (lambda b: b.update(base_version=3), "base_version"),
        (lambda b: b.update(crc32=-1), "crc32"),
    ],
)
def test_malformed_model_patch_is_a_wire_error(change, match):
    body = dict(_golden_patch().body)
    change(body)
    msg = w.Message(w.MessageType.MODEL, "ground", 1, 9, T0, body)
    with pytest.raises(w.WireError, match=match):
        w.decode(w.encode(msg))


def test_model_patch_with_signed_indices_is_a_wire_error():
    msg = _golden_patch()
    msg.body["patch"] = {"w": (np.array([2], np.int32), np.array([4.0], np.float32))}
    with pytest.raises(w.WireError, match="uint32 indices"):
        w.decode(w.encode(msg))


# ------------------------------------------------------------- the daemon


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _hello(client: Client, version: int, patches: bool) -> w.Message:
    client.seq += 1
    caps = ["model_patch"] if patches else []
    msg = w.hello(client.id, client.seq, time.time(), model_version=version)
    msg.body["capabilities"] = caps
    client.send(w.encode(msg))
    return client.recv()


def _sparse_delta(where: dict[int, float]) -> dict[str, np.ndarray]:
    d = {"w": np.zeros(N, np.float32), "b": np.zeros(1, np.float32)}
    for i, x in where.items():
        d["w"][i] = x
    return d


def test_daemon_sends_a_patch_to_an_agent_holding_the_last_model(ctx, tmp_path):
    d = start_daemon(tmp_path, model={"zeros": {"w": [N], "b": [1]}})
    try:
        sat, plain = Client(ctx, d.endpoint, "sat-p"), Client(ctx, d.endpoint, "old")
        first = _hello(sat, -1, True)
        assert "weights" in first.body and first.body["version"] == 0
        held = first.body["weights"]

        ack = sat.update(0, _sparse_delta({7: 1.0, 300: -2.0}))
        assert ack.type is w.MessageType.ACK
        deadline = time.monotonic() + T_WAIT_S
        while d.rounds_closed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)

        patch = _hello(sat, 0, True)
        while patch.body["version"] < 1:  # the round-open push may be first
            patch = sat.recv()
        assert "patch" in patch.body and patch.body["base_version"] == 0
        assert patch.body["patch"]["w"][0].tolist() == [7, 300]
        full = _hello(plain, 0, False)  # no capability: the full weights
        assert "weights" in full.body
        got = apply_patch(held, patch.body["patch"], patch.body["crc32"])
        for name, value in full.body["weights"].items():
            assert got[name].tobytes() == value.tobytes()
        assert len(w.encode(patch)) * 10 < len(w.encode(full))
    finally:
        d.stop()


def test_daemon_sends_weights_when_the_patch_base_is_unknown(ctx, tmp_path):
    d = start_daemon(tmp_path, model={"zeros": {"w": [N], "b": [1]}})
    try:
        sat = Client(ctx, d.endpoint, "sat-u")
        # A version the ground never sent (the state it knows starts at 0).
        reply = _hello(sat, 5, True)
        assert "weights" in reply.body
    finally:
        d.stop()


class SparseTrainer:
    """Moves 3 of N coordinates per round: the ground's steps are sparse."""

    def __init__(self) -> None:
        self.seen: list[dict[str, np.ndarray]] = []

    def initial_weights(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(N, np.float32), "b": np.zeros(1, np.float32)}

    def train(self, weights, round_index):
        self.seen.append({k: np.array(v) for k, v in weights.items()})
        delta = {"w": np.zeros(N, np.float32), "b": np.zeros(1, np.float32)}
        delta["w"][[round_index, 100 + round_index, N - 1]] = 0.5
        return TrainResult(delta, 10, {"loss": 1.0})


def test_agent_follows_the_ground_model_through_patches(tmp_path):
    d = start_daemon(
        tmp_path,
        model={"zeros": {"w": [N], "b": [1]}},
        rounds={"min_participants": 1, "deadline_s": 3600.0},
    )
    raw = agent_config(tmp_path, "sat-1", d.endpoint, agent={"max_rounds": 3})
    trainer = SparseTrainer()
    agent = Agent(parse_agent_config(raw, tmp_path), trainer=trainer).start()
    try:
        assert agent.join(3 * T_WAIT_S) and agent.error is None
        deadline = time.monotonic() + T_WAIT_S
        while d.rounds_closed < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert d.metrics.value("orbitfl_models_sent_total", form="patch") >= 2
        # Each round trained from the ground's model of the round before,
        # bit for bit: round r saw the 3 coordinates of rounds 0..r-1 at 0.5.
        assert len(trainer.seen) == 3
        for r, weights in enumerate(trainer.seen):
            expect = np.zeros(N, np.float32)
            for q in range(r):
                expect[[q, 100 + q]] = 0.5
            expect[N - 1] = 0.5 * r
            assert weights["w"].tobytes() == expect.tobytes(), r
        final = d.model()["w"]
        assert final[N - 1] == 1.5 and np.count_nonzero(final) == 7
    finally:
        agent.stop()
        d.stop()


def test_model_patch_with_a_non_string_tensor_name_is_a_wire_error():
    # A hostile ground mixing bytes and str names must not reach apply_patch.
    body = dict(_golden_patch().body)
    packed = w.encode(_golden_patch())
    msg = w.decode(packed)
    idx, values = msg.body["patch"]["w"]
    body["patch"] = {b"x": (idx, values), "y": (idx, values)}
    raw = msgpack.packb(
        {
            **{k: v for k, v in body.items() if k != "patch"},
            "patch": {
                name: [pack_array(i), pack_array(v)]
                for name, (i, v) in body["patch"].items()
            },
        },
        use_bin_type=True,
    )
    frame = w.encode_envelope(w.MessageType.MODEL, "ground", 1, 9, T0, raw)
    with pytest.raises(w.WireError, match="must be a str"):
        w.decode(frame)


def test_apply_patch_to_a_fortran_ordered_model():
    held = {"a": np.asfortranarray(np.zeros((4, 3), np.float32))}
    target = {"a": np.zeros((4, 3), np.float32)}
    target["a"][1, 2] = 2.0
    flat = 1 * 3 + 2
    patch = {"a": (np.array([flat], np.uint32), np.array([2.0], np.float32))}
    got = apply_patch(held, patch, model_crc32(target))
    assert got["a"].tobytes() == target["a"].tobytes()
