"""The wire protocol: golden bytes for every message type, and hostile input."""

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import _wire as w

T0 = 1_700_000_000.0

# Golden vectors: if one of these changes, the protocol changed, and
# PROTOCOL_VERSION must be bumped with it.  Each was checked by hand against
# the msgpack spec: 0x97 = array of 7, then version 1, the type, the sender as
# fixstr, round (0xff = -1), seq, send time as float64 (0xcb) and the body as
# bin8 (0xc4 + length).
GOLDEN = {
    "HELLO": (
        lambda: w.hello("sat-1", 0, T0, model_version=-1, capabilities=["topk"]),
        "970101a57361742d31ff00cb41d954fc40000000c42382ad6d6f64656c5f76657273696f"
        "6effac6361706162696c697469657391a4746f706b",
    ),
    "MODEL": (
        lambda: w.model(
            "ground",
            0,
            1,
            T0 + 0.5,
            version=0,
            deadline_s=T0 + 600,
            weights={"w": np.arange(3, dtype=np.float32)},
        ),
        "970102a667726f756e640001cb41d954fc40200000c43e83a776657273696f6e00aa6465"
        "61646c696e655f73cb41d954fcd6000000a77765696768747381a17793a33c6634910"
        "3c40c000000000000803f00000040",
    ),
    "UPDATE": (
        lambda: w.update(
            "sat-1",
            0,
            2,
            T0 + 1,
            base_version=0,
            num_samples=10,
            metrics={"loss": 0.5},
            delta={"w": np.ones(2, np.float32)},
        ),
        "970103a57361742d310002cb41d954fc40400000c44d84ac626173655f76657273696f6e"
        "00ab6e756d5f73616d706c65730aa76d65747269637381a46c6f7373cb3fe000000000"
        "0000a564656c746181a17793a33c66349102c4080000803f0000803f",
    ),
    "ACK": (
        lambda: w.ack("ground", 3, T0 + 2, of=("sat-1", 0, 2)),
        "970104a667726f756e640003cb41d954fc40800000c41882a26f6693a57361742d310002"
        "a96475706c6963617465c2",
    ),
    "NACK": (
        lambda: w.nack(
            "ground", 4, T0 + 2, of=("sat-1", 0, 2), reason="stale_round", detail="x"
        ),
        "970105a667726f756e640004cb41d954fc40800000c42983a26f6693a57361742d310002"
        "a6726561736f6eab7374616c655f726f756e64a664657461696ca178",
    ),
    "HEARTBEAT": (
        lambda: w.heartbeat("sat-1", 5, T0 + 3, model_version=0),
        "970106a57361742d31ff05cb41d954fc40c00000c41081ad6d6f64656c5f76657273696f6e00",
    ),
    "CREDIT": (
        lambda: w.credit("sat-1", 6, T0 + 4, of=("sat-1", 0, 2)),
        "970107a57361742d310006cb41d954fc41000000c40d81a26f6693a57361742d310002",
    ),
    # The body is a map of one bin: 0xc4 0x63 then the 99 bytes of the UPDATE
    # golden vector above, verbatim (sat-2 relays sat-1's update).
    "RELAY": (
        lambda: w.relay("sat-2", 0, 7, T0 + 5, message=w.encode(GOLDEN["UPDATE"][0]())),
        "970108a57361742d320007cb41d954fc41400000c46e81a76d657373616765c463"
        "970103a57361742d310002cb41d954fc40400000c44d84ac626173655f76657273696f6e"
        "00ab6e756d5f73616d706c65730aa76d65747269637381a46c6f7373cb3fe000000000"
        "0000a564656c746181a17793a33c66349102c4080000803f0000803f",
    ),
}


def test_golden_vectors_cover_every_message_type():
    assert set(GOLDEN) == {t.name for t in w.MessageType}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_encoding_matches_golden_bytes(name):
    make, hex_bytes = GOLDEN[name]
    assert w.encode(make()).hex() == hex_bytes


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes_decode_to_the_message(name):
    make, hex_bytes = GOLDEN[name]
    expected = make()
    got = w.decode(bytes.fromhex(hex_bytes))
    assert (got.type, got.sender, got.round, got.seq, got.send_time_s) == (
        expected.type,
        expected.sender,
        expected.round,
        expected.seq,
        expected.send_time_s,
    )
    for key, value in expected.body.items():
        if (
            isinstance(value, dict)
            and value
            and isinstance(next(iter(value.values())), np.ndarray)
        ):
            assert value.keys() == got.body[key].keys()
            for k in value:
                np.testing.assert_array_equal(got.body[key][k], value[k])
                assert got.body[key][k].dtype == value[k].dtype
        elif key == "of":
            assert got.body[key] == list(value)
        else:
            assert got.body[key] == value


def test_decoded_arrays_are_views_of_the_received_bytes():
    weights = {"w": np.arange(1000, dtype=np.float32).reshape(10, 100)}
    data = w.encode(
        w.model("ground", 1, 1, T0, version=1, deadline_s=T0, weights=weights)
    )
    got = w.decode(data).body["weights"]["w"]
    assert got.shape == (10, 100) and not got.flags.writeable  # np.frombuffer
    np.testing.assert_array_equal(got, weights["w"])


def test_nine_bytes_claiming_a_huge_array_are_refused_without_allocating():
    # array32 header claiming 2**32 - 1 items, then four bytes of nothing.
    with pytest.raises(w.MalformedMessage, match="max_array_len"):
        w.decode(b"\xdd\xff\xff\xff\xff\x00\x00\x00\x00")


def test_body_claiming_a_huge_bin_is_refused():
    body = b"\xc6\xff\xff\xff\xf0"  # bin32 of ~4 GiB, with no data
    data = msgpack.packb([1, 3, "sat-1", 0, 0, T0, body])
    with pytest.raises(w.WireError) as info:
        w.decode(data, w.Limits(max_message_bytes=1 << 20))
    assert info.value.sender == "sat-1" and info.value.seq == 0


def test_truncated_message_is_reported_as_truncated():
    make, hex_bytes = GOLDEN["UPDATE"]
    data = bytes.fromhex(hex_bytes)
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(w.TruncatedMessage, match="truncated"):
            w.decode(data[:cut])


def test_message_one_byte_over_the_cap_is_refused_before_parsing():
    data = w.encode(GOLDEN["UPDATE"][0]())
    limits = w.Limits(max_message_bytes=len(data))
    assert w.decode(data, limits).type is w.MessageType.UPDATE
    with pytest.raises(w.MessageTooLarge, match=f"{len(data) + 1} bytes is over"):
        w.decode(data + b"\x00", limits)


def test_unknown_version_names_the_sender_so_it_can_be_nacked():
    make, _ = GOLDEN["UPDATE"]
    msg = make()
    msg.version = 7
    with pytest.raises(w.UnsupportedVersion, match="version 7") as info:
        w.decode(w.encode(msg))
    assert (info.value.sender, info.value.round, info.value.seq) == ("sat-1", 0, 2)
    assert info.value.reason == "bad_version"


def test_unknown_message_type_is_refused():
    data = w.encode_envelope(w.MessageType.HELLO, "sat-1", 0, 0, T0, b"\x80")
    data = data[:2] + b"\x63" + data[3:]  # type 99
    with pytest.raises(w.UnknownMessageType, match="99"):
        w.decode(data)


@pytest.mark.parametrize(
    "body, match",
    [
        ({"model_version": -1}, "capabilities"),
        ({"model_version": "x", "capabilities": []}, "model_version"),
        ({"model_version": -1, "capabilities": [1]}, "capabilities"),
    ],
)
def test_hello_schema_violations_name_the_field(body, match):
    data = w.encode_envelope(
        w.MessageType.HELLO, "sat-1", 0, 0, T0, msgpack.packb(body)
    )
    with pytest.raises(w.MalformedMessage, match=match):
        w.decode(data)


def test_update_with_array_length_not_matching_shape_is_refused():
    body = {
        "base_version": 0,
        "num_samples": 3,
        "metrics": {},
        "delta": {"w": ["<f4", [1000], b"\x00" * 8]},
    }
    data = w.encode_envelope(
        w.MessageType.UPDATE, "sat-1", 0, 0, T0, msgpack.packb(body)
    )
    with pytest.raises(w.MalformedMessage, match="needs 4000 bytes but 8"):
        w.decode(data)


def test_update_with_disallowed_dtype_is_refused():
    body = {
        "base_version": 0,
        "num_samples": 3,
        "metrics": {},
        "delta": {"w": ["|O", [1], b"\x00" * 8]},
    }
    data = w.encode_envelope(
        w.MessageType.UPDATE, "sat-1", 0, 0, T0, msgpack.packb(body)
    )
    with pytest.raises(w.MalformedMessage, match="not allowed"):
        w.decode(data)


def test_array_over_the_element_limit_is_refused():
    msg = GOLDEN["UPDATE"][0]()
    msg.body["delta"] = {"w": np.zeros(101, np.float32)}
    with pytest.raises(w.MalformedMessage, match="more than the limit of 100"):
        w.decode(w.encode(msg), w.Limits(max_elements=100))


def test_update_needs_exactly_one_payload():
    with pytest.raises(ValueError, match="exactly one"):
        w.update_body(base_version=0, num_samples=1)


def test_ext_types_are_refused():
    data = msgpack.packb([1, 6, "sat-1", 0, 0, T0, msgpack.ExtType(1, b"x")])
    with pytest.raises(w.MalformedMessage):
        w.decode(data)


def test_bad_sender_id_is_refused_on_encode_and_decode():
    with pytest.raises(ValueError, match="sender id"):
        w.encode_envelope(w.MessageType.HELLO, "sat 1", 0, 0, T0, b"\x80")
    data = msgpack.packb([1, 6, "a" * 65, 0, 0, T0, msgpack.packb({})])
    with pytest.raises(w.MalformedMessage):
        w.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_wire_errors(data):
    try:
        w.decode(data, w.Limits(max_message_bytes=1000))
    except w.WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_golden_bytes_raise_only_wire_errors(data):
    name = data.draw(st.sampled_from(sorted(GOLDEN)))
    raw = bytearray(bytes.fromhex(GOLDEN[name][1]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        w.decode(bytes(raw))
    except w.WireError:
        pass


def test_relay_carries_the_origins_update_frame_verbatim():
    inner = w.encode(GOLDEN["UPDATE"][0]())
    got = w.decode(w.encode(w.relay("sat-2", 0, 7, T0, message=inner)))
    assert got.sender == "sat-2" and got.body["message"] == inner
    origin = w.relayed_update(got.body)
    assert (origin.type, origin.sender, origin.round, origin.seq) == (
        w.MessageType.UPDATE,
        "sat-1",
        0,
        2,
    )
    np.testing.assert_array_equal(origin.body["delta"]["w"], np.ones(2, np.float32))


def test_relay_of_anything_but_an_update_is_malformed():
    hello = w.encode(GOLDEN["HELLO"][0]())
    relayed = w.decode(w.encode(w.relay("sat-2", 0, 1, T0, message=hello)))
    with pytest.raises(w.MalformedMessage, match="must carry an UPDATE") as info:
        w.relayed_update(relayed.body)
    assert info.value.sender == "sat-1"
    nested = w.encode(w.relay("sat-3", 0, 1, T0, message=w.encode(relayed_msg())))
    with pytest.raises(w.MalformedMessage, match="carries a RELAY"):
        w.relayed_update(w.decode(nested).body)


def relayed_msg() -> w.Message:
    return w.relay("sat-2", 0, 1, T0, message=w.encode(GOLDEN["UPDATE"][0]()))


def test_relay_inner_frame_is_bounded_like_any_frame():
    inner = w.encode(GOLDEN["UPDATE"][0]())
    small = w.Limits(max_message_bytes=len(inner) - 1)
    outer = w.encode(w.relay("sat-2", 0, 1, T0, message=inner))
    body = w.decode(outer).body
    with pytest.raises(w.MessageTooLarge):
        w.relayed_update(body, small)
    with pytest.raises(w.TruncatedMessage):
        w.relayed_update({"message": inner[:-5]})
    with pytest.raises(w.MalformedMessage, match="'message'"):
        w.decode(w.encode_envelope(w.MessageType.RELAY, "sat-2", 0, 1, T0, b"\x80"))
