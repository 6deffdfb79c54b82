"""The compression API: config builder, client with error feedback, the wire
format (untrusted decoding), state save/restore.  Runs on both backends."""

import hashlib
import math
import os
import subprocess
import sys

import msgpack
import numpy as np
import pytest

import agent.kernels as kernels
from agent import (
    CompressedUpdate,
    CompressionConfig,
    CompressionType,
    FederatedClient,
    UpdateFormatError,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOUND = kernels.backends()
ALL_TYPES = list(CompressionType)


@pytest.fixture(params=["numpy", "compiled"], autouse=True)
def backend(request, monkeypatch):
    """Run every test of this module on each kernel backend."""
    if request.param not in FOUND:
        pytest.skip("compiled kernels are not built")
    monkeypatch.setattr(kernels, "_backend", FOUND[request.param])
    return request.param


def gradient(n=100_000, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


def config(method, **kw):
    c = CompressionConfig(method).with_sparsity(kw.pop("sparsity", 0.99))
    for name, value in kw.items():
        c = getattr(c, f"with_{name}")(value)
    return c


# ------------------------------------------------------------------ config


def test_config_builder_is_immutable_and_validates():
    base = CompressionConfig(CompressionType.TOPK)
    c = base.with_sparsity(0.9).with_error_feedback(False).with_bits(4)
    assert base.sparsity == 0.99 and base.error_feedback and base.bits == 8
    assert (c.sparsity, c.error_feedback, c.bits) == (0.9, False, 4)
    assert c.with_value_dtype(np.float16).value_dtype == "float16"
    with pytest.raises(ValueError, match=r"sparsity 1.0 must be in \[0, 1\)"):
        base.with_sparsity(1.0)
    with pytest.raises(ValueError, match="sparsity -0.1"):
        base.with_sparsity(-0.1)
    with pytest.raises(ValueError, match="bits 3 must be 8, 4 or 2"):
        base.with_bits(3)
    with pytest.raises(ValueError, match="chunk_size 0"):
        base.with_chunk_size(0)
    with pytest.raises(ValueError, match="method 'zip'"):
        CompressionConfig("zip")
    assert CompressionConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown config fields"):
        CompressionConfig.from_dict({"method": "topk", "colour": 1})


def test_unbiased_scaling_with_error_feedback_is_refused():
    cfg = config(CompressionType.RANDOMK, unbiased_scaling=True)
    with pytest.raises(ValueError, match="use one or the other"):
        FederatedClient("sat-1", cfg)
    FederatedClient("sat-1", cfg.with_error_feedback(False))


# --------------------------------------------------------------- quick start


def test_quick_start_snippet_reports_a_ratio_above_50():
    gradients = gradient(1_000_000)
    compression = (
        CompressionConfig(CompressionType.TOPK)
        .with_sparsity(0.99)
        .with_error_feedback(True)
    )
    client = FederatedClient("sat-001", compression)
    compressed = client.compress(gradients)
    assert compressed.compression_ratio > 50
    dense = compressed.decompress()
    assert dense.shape == gradients.shape and np.count_nonzero(dense) == 10_000
    assert compressed.compression_ratio == 4_000_000 / len(compressed.encode())


# ------------------------------------------------------------- round trips


@pytest.mark.parametrize("method", ALL_TYPES, ids=lambda m: m.value)
@pytest.mark.parametrize("ef", [True, False])
def test_every_type_round_trips_through_the_wire(method, ef):
    g = gradient(20_000, seed=1)
    client = FederatedClient("sat-7", config(method, error_feedback=ef, bits=4))
    update = client.compress(g, round_index=12)
    data = update.encode()
    back = CompressedUpdate.decode(data, max_elements=20_000)
    assert back.node_id == "sat-7" and back.round_index == 12
    assert back.method is method and back.tensors == {
        "gradient": ((20_000,), "float32")
    }
    dense = update.decompress()
    assert np.array_equal(back.decompress(), dense)
    assert back.encode() == data
    assert msgpack.packb(back.to_wire(), use_bin_type=True) == data
    # add_to is a weighted add of exactly what decompress returns
    for acc_dtype in (np.float32, np.float64):
        acc = np.full(20_000, 0.5, acc_dtype)
        back.add_to({"gradient": acc}, 0.25)
        expect = np.full(20_000, 0.5, acc_dtype)
        expect += (0.25 * dense.astype(np.float64)).astype(acc_dtype)
        assert np.array_equal(acc, expect)
    assert update.wire_nbytes == len(data)
    assert update.dense_nbytes == 80_000


@pytest.mark.parametrize("method", ALL_TYPES, ids=lambda m: m.value)
def test_error_feedback_keeps_exactly_what_was_not_sent(method):
    client = FederatedClient("sat-2", config(method, sparsity=0.95))
    total_in = np.zeros(5000, np.float64)
    total_sent = np.zeros(5000, np.float64)
    for rnd in range(4):
        g = gradient(5000, seed=rnd)
        before = client.residuals.get("gradient", np.zeros(5000, np.float32)).copy()
        update = client.compress(g, round_index=rnd)
        sent = update.decompress()
        after = client.residuals["gradient"]
        if method in (CompressionType.TOPK, CompressionType.RANDOMK):
            assert np.array_equal(sent + after, before + g)  # exact
        else:
            assert np.allclose(sent + after, before + g, atol=1e-5)
        total_in += g
        total_sent += sent
    leftover = total_in - total_sent
    assert np.allclose(leftover, client.residuals["gradient"], atol=1e-4)


def test_float16_values_keep_their_rounding_error_in_the_residual():
    g = gradient(10_000, seed=3) * 1000
    g[5] = 1e6  # beyond float16: saturates, the excess stays behind
    client = FederatedClient("s", config(CompressionType.TOPK, value_dtype="float16"))
    update = client.compress(g)
    wire = update.to_wire()["tensors"][0]
    assert wire["values"][0] == "<f2"
    sent = update.decompress()
    assert np.isfinite(sent).all() and sent[5] == 65504
    assert np.allclose(sent + client.residuals["gradient"], g, rtol=0, atol=1e-3)


def test_dict_of_tensors_keeps_names_shapes_and_dtypes():
    grads = {
        "conv.weight": gradient(3 * 3 * 8 * 4, seed=4).reshape(3, 3, 8, 4),
        "conv.bias": gradient(4, seed=5).astype(np.float64),
        "head": gradient(1000, seed=6).astype(np.float16).reshape(10, 100),
    }
    for method in ALL_TYPES:
        client = FederatedClient("sat-3", config(method, sparsity=0.5))
        update = client.compress(grads)
        assert update.tensors == {
            "conv.weight": ((3, 3, 8, 4), "float32"),
            "conv.bias": ((4,), "float64"),
            "head": ((10, 100), "float16"),
        }
        out = CompressedUpdate.decode(update.encode()).decompress()
        assert set(out) == set(grads)
        for name, a in grads.items():
            assert out[name].shape == a.shape and out[name].dtype == a.dtype
        assert set(client.residuals) == set(grads)
        assert client.residuals["conv.bias"].dtype == np.float64


def test_list_input_and_empty_tensors():
    client = FederatedClient("sat-4", config(CompressionType.TOPK))
    update = client.compress([0.5, -2.0, 1.0])
    assert np.array_equal(update.decompress(), np.array([0, -2.0, 0], np.float32))
    for method in ALL_TYPES:
        c = FederatedClient("sat-4", config(method))
        u = c.compress({"empty": np.zeros((0, 3), np.float32), "x": np.ones(8)})
        back = CompressedUpdate.decode(u.encode())
        assert back.decompress()["empty"].shape == (0, 3)


def test_randomk_indices_are_derived_not_sent():
    g = gradient(50_000, seed=8)
    update = FederatedClient("sat-9", config(CompressionType.RANDOMK)).compress(
        g, round_index=3
    )
    wire = update.to_wire()["tensors"][0]
    assert "index_bits" not in wire and wire["k"] == 500
    # ~4 bytes per kept value, header included
    assert update.wire_nbytes < 500 * 4 + 400
    # another node or round draws other indices
    other = FederatedClient("sat-8", config(CompressionType.RANDOMK)).compress(
        g, round_index=3
    )
    assert not np.array_equal(
        np.flatnonzero(update.decompress()), np.flatnonzero(other.decompress())
    )


def test_wire_is_compact_for_each_type():
    g = gradient(1_000_000, seed=9)
    sizes = {}
    for method in ALL_TYPES:
        u = FederatedClient("s", config(method)).compress(g)
        sizes[method] = u.wire_nbytes / max(1, u.kept_elements)
    assert sizes[CompressionType.TOPK] < 5.6  # 4-byte values + ~1.4-byte indices
    assert sizes[CompressionType.RANDOMK] < 4.1
    assert sizes[CompressionType.QUANTIZE] < 1.01
    assert sizes[CompressionType.TOPK_QUANTIZE] < 2.5
    assert sizes[CompressionType.SIGN] < 0.126


def test_backends_encode_identical_bytes(backend):
    """The same update, byte for byte, whichever backend compressed it."""
    code = (
        "import sys, numpy as np\n"
        "from agent import FederatedClient, CompressionConfig, CompressionType as T\n"
        "g = np.random.default_rng(2).standard_normal(30000).astype(np.float32)\n"
        "out = b''\n"
        "for m in T:\n"
        "    c = FederatedClient('s', CompressionConfig(m).with_bits(4)"
        ".with_stochastic_rounding(True))\n"
        "    out += c.compress(g, round_index=1).encode()\n"
        "    out += c.compress(g, round_index=2).encode()\n"
        "import hashlib; print(hashlib.sha256(out).hexdigest())\n"
    )
    digests = set()
    for choice in FOUND:
        env = dict(os.environ, PYTHONPATH=REPO, ORBITFL_KERNELS=choice)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_golden_bytes_of_a_small_update():
    """Pins the wire format: a change here breaks every deployed ground."""
    g = np.array([0.5, -3.0, 0.25, 2.0, 0.0, -0.125, 1.0, 4.0], np.float32)
    u = FederatedClient("sat-1", config(CompressionType.TOPK, sparsity=0.5)).compress(
        g, round_index=2
    )
    wire = u.to_wire()
    assert wire["tensors"][0]["k"] == 4
    # indices 1, 3, 6, 7 -> deltas 1, 1, 2, 0 at 2 bits, LSB first
    assert bytes(wire["tensors"][0]["index_bits"][2]) == bytes([0b00_10_01_01])
    assert np.array_equal(u.decompress(), [0, -3, 0, 2, 0, 0, 1, 4])
    assert hashlib.sha256(u.encode()).hexdigest()[:16] == GOLDEN_TOPK


GOLDEN_TOPK = "3765aabbd4a8b1f2"


# ---------------------------------------------------------------- bad input


def test_nan_in_any_tensor_raises_and_leaves_every_residual_unchanged():
    client = FederatedClient("sat-5", config(CompressionType.TOPK))
    good = {"a": gradient(1000, seed=1), "b": gradient(500, seed=2)}
    client.compress(good)
    before = {k: v.copy() for k, v in client.residuals.items()}
    bad = {"a": gradient(1000, seed=3), "b": gradient(500, seed=4)}
    bad["b"][[7, 9]] = [np.nan, np.inf]
    with pytest.raises(ValueError, match="'b' has 2 non-finite.*first at flat index 7"):
        client.compress(bad)
    for k, v in client.residuals.items():
        assert np.array_equal(v, before[k])
    single = FederatedClient("sat-5", config(CompressionType.QUANTIZE))
    g = gradient(3000)
    single.compress(g)
    r = single.residuals["gradient"].copy()
    g[2999] = -np.inf
    with pytest.raises(ValueError, match="1 non-finite value .*index 2999"):
        single.compress(g)
    assert np.array_equal(single.residuals["gradient"], r)


def test_shape_change_and_bad_dtype_are_clear_errors():
    client = FederatedClient("sat-6", config(CompressionType.TOPK))
    client.compress(np.ones(10, np.float32))
    with pytest.raises(ValueError, match="has 11 float32 elements but its residual"):
        client.compress(np.ones(11, np.float32))
    client.reset()
    client.compress(np.ones(11, np.float32))
    with pytest.raises(ValueError, match="dtype int64; expected float16"):
        client.compress(np.arange(5))
    with pytest.raises(ValueError, match="round_index -1"):
        client.compress(np.ones(11, np.float32), round_index=-1)
    with pytest.raises(ValueError, match="node_id ''"):
        FederatedClient("")


def _wire(method=CompressionType.TOPK, n=1000, **kw):
    u = FederatedClient("sat-x", config(method, **kw)).compress(gradient(n, seed=11))
    return msgpack.unpackb(u.encode(), raw=False)


def _mutated(mutate, method=CompressionType.TOPK):
    w = _wire(method)
    mutate(w)
    return w


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda w: w.update(version=2), "version 2"),
        (lambda w: w.update(round_index=-4), "round_index -4"),
        (lambda w: w.update(node_id=7), "node_id 7"),
        (lambda w: w.update(method="sign"), "method 'sign' disagrees"),
        (lambda w: w["config"].update(bits=5), "bits 5"),
        (lambda w: w.update(tensors=[]), "tensors must be a list of 1"),
        (lambda w: w["tensors"][0].update(dtype="<i4"), "dtype '<i4'"),
        (lambda w: w["tensors"][0].update(shape=[-1]), r"shape \[-1\]"),
        (lambda w: w["tensors"][0].update(k=1001), "k 1001 must be an int in"),
        (lambda w: w["tensors"][0].update(k=11), "index_(widths|bits).*expected"),
        (lambda w: w["tensors"][0].pop("values"), "lacks field 'values'"),
        (lambda w: w["tensors"][0]["values"].__setitem__(0, "<i8"), "'values'.*<i8"),
        (
            lambda w: w["tensors"][0]["values"].__setitem__(
                2, np.full(10, np.nan, np.float32).tobytes()
            ),
            "10 non-finite values",
        ),
        (
            lambda w: w["tensors"][0].update(shape=[500]),
            "outside|beyond",
        ),
        (
            lambda w: w["tensors"][0]["index_bits"].__setitem__(
                2, w["tensors"][0]["index_bits"][2][:-1]
            ),
            "index_bits",
        ),
        (lambda w: w.update(kind="array", tensors=w["tensors"] * 2), "carries one"),
        (lambda w: w.update(kind="dict", tensors=w["tensors"] * 2), "appears twice"),
    ],
)
def test_from_wire_rejects_malformed_updates_naming_the_value(mutate, message):
    with pytest.raises(UpdateFormatError, match=message):
        CompressedUpdate.from_wire(_mutated(mutate))


def test_from_wire_checks_quantized_and_sign_fields():
    w = _wire(CompressionType.QUANTIZE)
    w["tensors"][0]["amax"][2] = np.full(2, 1.0, np.float32).tobytes()
    with pytest.raises(UpdateFormatError, match="field 'amax'"):
        CompressedUpdate.from_wire(w)
    w = _wire(CompressionType.QUANTIZE)
    amax = np.frombuffer(w["tensors"][0]["amax"][2], np.float32).copy()
    amax[0] = -2.0
    w["tensors"][0]["amax"][2] = amax.tobytes()
    with pytest.raises(UpdateFormatError, match=r"amax\[0\] = .*-2.0.* is negative"):
        CompressedUpdate.from_wire(w)
    w = _wire(CompressionType.SIGN)
    w["tensors"][0]["scale"] = float("inf")
    with pytest.raises(UpdateFormatError, match="scale inf"):
        CompressedUpdate.from_wire(w)
    w = _wire(CompressionType.SIGN)
    w["tensors"][0]["signs"][2] = b"\x00"
    with pytest.raises(UpdateFormatError, match="'signs'"):
        CompressedUpdate.from_wire(w)


def test_decode_bounds_untrusted_bytes():
    data = (
        FederatedClient("s", config(CompressionType.TOPK)).compress(gradient()).encode()
    )
    with pytest.raises(UpdateFormatError, match="more than the limit of 100"):
        CompressedUpdate.decode(data, max_bytes=100)
    with pytest.raises(UpdateFormatError, match="more than the limit of 99999"):
        CompressedUpdate.decode(data, max_elements=99_999)
    for junk in (b"", b"\xc1", data[:-3], b"\x93\x01\x02\x03", data + b"\x00"):
        with pytest.raises(UpdateFormatError):
            CompressedUpdate.decode(junk)
    bomb = msgpack.packb({"format": "orbitfl.update", "tensors": [0] * 70_000})
    with pytest.raises(UpdateFormatError):
        CompressedUpdate.decode(bomb)


def test_add_to_checks_accumulators_before_adding():
    u = FederatedClient("s", config(CompressionType.TOPK)).compress(
        {"a": gradient(100), "b": gradient(50).reshape(5, 10)}
    )
    a = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="no accumulator for tensor 'b'"):
        u.add_to({"a": a}, 1.0)
    assert not a.any()
    with pytest.raises(ValueError, match=r"'b' has shape \(5, 10\); expected flat"):
        u.add_to({"a": a, "b": np.zeros((5, 10), np.float32)}, 1.0)
    with pytest.raises(ValueError, match="float32/float64"):
        u.add_to({"a": a, "b": np.zeros(50, np.int64)}, 1.0)
    with pytest.raises(ValueError, match="weight inf"):
        u.add_to({"a": a, "b": np.zeros(50)}, math.inf)


# --------------------------------------------------------------------- state


def test_state_survives_a_reboot(tmp_path):
    cfg = config(CompressionType.TOPK_QUANTIZE, sparsity=0.9, bits=4)
    client = FederatedClient("sat-10", cfg)
    grads = {"w": gradient(4000, seed=1), "b": gradient(40, seed=2, dtype=np.float64)}
    client.compress(grads, round_index=0)
    path = tmp_path / "state.msgpack"
    client.save_state(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.msgpack"]
    rebooted = FederatedClient("sat-10", cfg)
    rebooted.load_state(path)
    nxt = {"w": gradient(4000, seed=3), "b": gradient(40, seed=4, dtype=np.float64)}
    assert (
        client.compress(nxt, round_index=1).encode()
        == rebooted.compress(nxt, round_index=1).encode()
    )
    # saving again replaces the file atomically
    rebooted.save_state(path)
    again = FederatedClient("sat-10", cfg)
    again.load_state(path)
    for k, v in rebooted.residuals.items():
        assert np.array_equal(again.residuals[k], v)


def test_load_state_rejects_foreign_or_corrupt_state(tmp_path):
    client = FederatedClient("sat-11")
    client.compress(gradient(100))
    state = client.state_dict()
    with pytest.raises(ValueError, match="belongs to node 'sat-11', not 'sat-12'"):
        FederatedClient("sat-12").load_state_dict(state)
    bad = msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False)
    bad["residuals"]["gradient"][2] = np.full(100, np.nan, np.float32).tobytes()
    with pytest.raises(ValueError, match="100 non-finite values"):
        FederatedClient("sat-11").load_state_dict(bad)
    path = tmp_path / "s"
    path.write_bytes(b"\xc1garbage")
    with pytest.raises(ValueError, match="not valid msgpack"):
        FederatedClient("sat-11").load_state(path)
