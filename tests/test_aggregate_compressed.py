"""Compressed updates through the aggregator: the same result as dense.

A compressed update is scatter-added by the kernels of ``agent.kernels``
without being decompressed; the dense path forms every term the same way
(float64 product, one rounding), so the two must agree bit for bit, on both
kernel backends.
"""

import numpy as np
import pytest

import agent.kernels
from agent import CompressedUpdate, CompressionConfig, CompressionType, FederatedClient
from ground import AggregationStrategy, GradientAggregator, UpdateRejected

S = AggregationStrategy

METHODS = [
    CompressionConfig(CompressionType.NONE),
    CompressionConfig(CompressionType.TOPK).with_sparsity(0.9),
    CompressionConfig(CompressionType.THRESHOLD_TOPK).with_sparsity(0.9),
    CompressionConfig(CompressionType.RANDOMK).with_sparsity(0.8),
    CompressionConfig(CompressionType.QUANTIZE).with_bits(4),
    CompressionConfig(CompressionType.TOPK_QUANTIZE).with_sparsity(0.9).with_bits(8),
    CompressionConfig(CompressionType.SIGN),
]


@pytest.fixture(params=sorted(agent.kernels.backends()))
def backend(request, monkeypatch):
    """Run the test on each kernel backend (compiled and NumPy twin)."""
    module = agent.kernels.backends()[request.param]
    monkeypatch.setattr(agent.kernels, "_backend", module)
    return request.param


def model_like(rng) -> dict[str, np.ndarray]:
    return {
        "conv/kernel": rng.normal(size=(3, 3, 8)).astype(np.float32),
        "conv/bias": rng.normal(size=8).astype(np.float32),
        "head": rng.normal(size=(70_000,)).astype(np.float32),  # > one block
    }


def compressed_updates(rng, config, count: int) -> list[CompressedUpdate]:
    out = []
    for i in range(count):
        client = FederatedClient(f"sat-{i:03d}", config.with_error_feedback(False))
        grads = {k: v * 0.01 for k, v in model_like(rng).items()}
        out.append(client.compress(grads, round_index=3))
    return out


def assert_models_identical(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("config", METHODS, ids=lambda c: c.method.value)
@pytest.mark.parametrize(
    "strategy", [S.FEDAVG, S.FEDASYNC, S.FEDBUFF, S.MEDIAN, S.MULTI_KRUM]
)
def test_compressed_and_dense_sessions_reach_the_same_model(backend, config, strategy):
    rng = np.random.default_rng(31)
    model = model_like(rng)
    ups = compressed_updates(rng, config, 5)
    agg = GradientAggregator(strategy, buffer_size=2)

    sparse = agg.start(model)
    dense = agg.start(model)
    for i, u in enumerate(ups):
        changed = sparse.submit(u, num_samples=10 + i)
        assert dense.submit(u.decompress(), num_samples=10 + i) == changed
    assert sparse.close_round() == dense.close_round()
    assert sparse.version == dense.version > 0
    assert_models_identical(sparse.model, dense.model)


@pytest.mark.parametrize("config", METHODS, ids=lambda c: c.method.value)
def test_aggregate_of_compressed_equals_aggregate_of_decompressed(backend, config):
    rng = np.random.default_rng(32)
    ups = compressed_updates(rng, config, 3)
    agg = GradientAggregator(S.FEDAVG)
    got = agg.aggregate(ups, [0.4, 0.3, 0.3])
    want = agg.aggregate([u.decompress() for u in ups], [0.4, 0.3, 0.3])
    assert_models_identical(got, want)
    # ... and both are the weighted mean of the decompressed updates.
    for k in want:
        ref = sum(
            w * u.decompress()[k].astype(np.float64)
            for w, u in zip([0.4, 0.3, 0.3], ups, strict=True)
        )
        np.testing.assert_allclose(got[k], ref, rtol=1e-5, atol=1e-7)


def test_a_compressed_single_array_aggregates_to_an_array(backend):
    rng = np.random.default_rng(33)
    config = CompressionConfig(CompressionType.TOPK).with_sparsity(0.99)
    grads = [rng.normal(size=10_000).astype(np.float32) for _ in range(3)]
    ups = [FederatedClient(f"s{i}", config).compress(g) for i, g in enumerate(grads)]
    got = GradientAggregator(S.FEDAVG).aggregate(ups)
    assert isinstance(got, np.ndarray) and got.shape == (10_000,)
    np.testing.assert_array_equal(
        got, GradientAggregator(S.FEDAVG).aggregate([u.decompress() for u in ups])
    )
    # A session's model is a dict; the single array travels as "gradient".
    session = GradientAggregator(S.FEDAVG).start(
        {"gradient": np.zeros(10_000, np.float32)}
    )
    for u in ups:
        session.submit(u, num_samples=1)
    session.close_round()
    np.testing.assert_array_equal(session.model["gradient"], got)
    # ... also where the strategy needs them dense.
    session = GradientAggregator(S.MEDIAN).start(
        {"gradient": np.zeros(10_000, np.float32)}
    )
    for u in ups:
        session.submit(u, num_samples=1)
    session.close_round()
    np.testing.assert_array_equal(
        session.model["gradient"],
        np.median([u.decompress() for u in ups], axis=0),
    )


def test_wire_round_trip_then_aggregate(backend):
    rng = np.random.default_rng(34)
    config = CompressionConfig(CompressionType.TOPK_QUANTIZE).with_sparsity(0.95)
    ups = compressed_updates(rng, config, 3)
    decoded = [CompressedUpdate.decode(u.encode()) for u in ups]
    model = model_like(rng)
    a, b = (
        GradientAggregator(S.FEDAVG).start(model),
        GradientAggregator(S.FEDAVG).start(model),
    )
    for u, d in zip(ups, decoded, strict=True):
        a.submit(u, num_samples=7)
        b.submit(d, num_samples=7)
    a.close_round()
    b.close_round()
    assert_models_identical(a.model, b.model)


def test_compressed_updates_that_do_not_fit_the_model_are_rejected():
    rng = np.random.default_rng(35)
    model = model_like(rng)
    session = GradientAggregator(S.FEDAVG).start(model)
    config = CompressionConfig(CompressionType.TOPK).with_sparsity(0.9)

    wrong = {k: v.copy() for k, v in model.items()}
    wrong["conv/bias"] = np.ones(9, np.float32)
    with pytest.raises(UpdateRejected, match=r"'conv/bias' has shape \(9,\)") as e:
        session.submit(FederatedClient("a", config).compress(wrong), num_samples=1)
    assert e.value.reason == "shape"

    renamed = {"conv/kernel": model["conv/kernel"], "head": model["head"]}
    with pytest.raises(UpdateRejected, match=r"missing \['conv/bias'\]") as e:
        session.submit(FederatedClient("b", config).compress(renamed), num_samples=1)
    assert e.value.reason == "names"

    wide = {k: v.astype(np.float64) for k, v in model.items()}
    with pytest.raises(UpdateRejected, match="float64") as e:
        session.submit(FederatedClient("c", config).compress(wide), num_samples=1)
    assert e.value.reason == "dtype"

    single = FederatedClient("d", config).compress(model["head"])
    with pytest.raises(UpdateRejected) as e:
        session.submit(single, num_samples=1)
    assert e.value.reason == "names"
    assert session.pending == 0


def test_out_of_range_indices_never_reach_the_aggregator():
    # The index check lives in the decoder: an UPDATE whose indices point past
    # the tensor is refused before a CompressedUpdate exists to be submitted.
    config = CompressionConfig(CompressionType.TOPK).with_sparsity(0.5)
    update = FederatedClient("e", config).compress({"w": np.arange(1.0, 11.0)})
    wire = update.to_wire()
    widths, bits = agent.kernels.pack_indices(np.array([1, 3, 5, 7, 200], np.uint32))
    from agent._arrays import pack_array

    wire["tensors"][0]["index_widths"] = pack_array(widths)
    wire["tensors"][0]["index_bits"] = pack_array(bits)
    with pytest.raises(ValueError, match="200|range|10"):
        CompressedUpdate.from_wire(wire)


@pytest.mark.parametrize("strategy", [S.FEDAVG, S.FEDASYNC, S.FEDBUFF])
def test_both_kernel_backends_give_identical_models(strategy, monkeypatch):
    backends = agent.kernels.backends()
    if len(backends) < 2:
        pytest.skip("the compiled kernels are not built; nothing to compare")
    rng = np.random.default_rng(36)
    model = model_like(rng)
    config = CompressionConfig(CompressionType.TOPK_QUANTIZE).with_sparsity(0.9)
    ups = compressed_updates(rng, config, 4)
    dense = [{k: v * 0.5 for k, v in model_like(rng).items()} for _ in range(4)]
    results = {}
    for name, module in backends.items():
        monkeypatch.setattr(agent.kernels, "_backend", module)
        session = GradientAggregator(strategy, buffer_size=3).start(model)
        for i, (u, d) in enumerate(zip(ups, dense, strict=True)):
            session.submit(u, num_samples=i + 1)
            session.submit(d, num_samples=2 * i + 1)
        session.close_round()
        results[name] = session.model
    assert_models_identical(results["numpy"], results["compiled"])
