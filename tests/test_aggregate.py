"""The mean-type aggregation strategies, the streaming session and validation.

References are plain NumPy written out in the test (float64 where the
aggregator accumulates in float32, hence the named tolerances), and the
formulas are the papers' own: FedAsync (Xie et al. 2019), FedBuff (Nguyen et
al. 2022), FedAdam (Reddi et al. 2021).
"""

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ground import (
    AggregationStrategy,
    GradientAggregator,
    UpdateRejected,
)

FLOAT32_RTOL = 1e-5  # a few float32 roundings per element
FLOAT32_ATOL = 1e-6

S = AggregationStrategy


def make_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "dense/kernel": rng.normal(size=(4, 3)).astype(np.float32),
        "dense/bias": rng.normal(size=3).astype(np.float32),
    }


def make_delta(rng: np.random.Generator, scale: float = 1.0) -> dict:
    return {
        "dense/kernel": (scale * rng.normal(size=(4, 3))).astype(np.float32),
        "dense/bias": (scale * rng.normal(size=3)).astype(np.float32),
    }


def as64(tree: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float64) for k, v in tree.items()}


def assert_tree_close(got: dict, want: dict, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)


def assert_tree_identical(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert a[k].tobytes() == b[k].tobytes(), k


# -- the in-process form ---------------------------------------------------


def test_reference_design_call_matches_weighted_sum():
    rng = np.random.default_rng(1)
    g = [rng.normal(size=1000).astype(np.float32) for _ in range(3)]
    aggregator = GradientAggregator(AggregationStrategy.FEDAVG)

    aggregated = aggregator.aggregate(g, [0.4, 0.3, 0.3])

    want = 0.4 * g[0].astype(np.float64) + 0.3 * g[1] + 0.3 * g[2]
    assert isinstance(aggregated, np.ndarray)
    assert aggregated.shape == (1000,) and aggregated.dtype == np.float32
    np.testing.assert_allclose(aggregated, want, rtol=FLOAT32_RTOL, atol=1e-6)


def test_weights_that_do_not_sum_to_one_are_normalised():
    rng = np.random.default_rng(2)
    g = [rng.normal(size=50) for _ in range(3)]
    agg = GradientAggregator("fedavg")
    np.testing.assert_allclose(
        agg.aggregate(g, [4, 3, 3]), agg.aggregate(g, [0.4, 0.3, 0.3]), rtol=1e-12
    )
    np.testing.assert_allclose(
        agg.aggregate(g), (g[0] + g[1] + g[2]) / 3, rtol=1e-12, atol=1e-15
    )


def test_dict_updates_come_back_as_dict_in_float64_when_given_float64():
    rng = np.random.default_rng(3)
    ups = [as64(make_delta(rng)) for _ in range(4)]
    w = [1.0, 2.0, 3.0, 4.0]
    got = GradientAggregator(S.WEIGHTED).aggregate(ups, w)
    want = {
        k: sum(wi * u[k] for wi, u in zip(w, ups, strict=True)) / 10 for k in ups[0]
    }
    assert all(v.dtype == np.float64 for v in got.values())
    assert_tree_close(got, want, rtol=1e-12, atol=1e-14)


def test_length_mismatch_names_both_lengths():
    g = [np.ones(3)] * 3
    with pytest.raises(ValueError, match=r"3 updates but 2 weights"):
        GradientAggregator(S.FEDAVG).aggregate(g, [0.5, 0.5])


def test_zero_total_weight_is_a_clear_error_not_a_division():
    g = [np.ones(3), np.zeros(3)]
    with pytest.raises(ValueError, match=r"weights sum to 0\.0.*positive weight"):
        GradientAggregator(S.FEDAVG).aggregate(g, [0, 0.0])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1"])
def test_a_bad_weight_is_named(bad):
    with pytest.raises(ValueError, match=r"weights\[1\]="):
        GradientAggregator(S.FEDAVG).aggregate([np.ones(2)] * 2, [1.0, bad])


def test_no_updates_is_an_error():
    with pytest.raises(ValueError, match="no updates"):
        GradientAggregator(S.FEDAVG).aggregate([])


def test_a_nan_update_is_rejected_with_count_and_index():
    g = [np.ones(10), np.ones(10)]
    g[1][[3, 7]] = [np.nan, np.inf]
    with pytest.raises(UpdateRejected, match=r"updates\[1\].*2 NaN/Inf.*index 3") as e:
        GradientAggregator(S.FEDAVG).aggregate(g)
    assert e.value.reason == "nonfinite"


def test_shape_dtype_and_name_mismatches_have_their_reasons():
    rng = np.random.default_rng(4)
    model = make_model(rng)
    session = GradientAggregator(S.FEDAVG).start(model)

    bad_shape = make_delta(rng)
    bad_shape["dense/bias"] = np.zeros(4, np.float32)
    with pytest.raises(UpdateRejected, match=r"shape \(4,\); expected \(3,\)") as e:
        session.submit(bad_shape, num_samples=1)
    assert e.value.reason == "shape"

    bad_dtype = make_delta(rng)
    bad_dtype["dense/bias"] = np.zeros(3, np.int32)
    with pytest.raises(UpdateRejected, match="dtype int32") as e:
        session.submit(bad_dtype, num_samples=1)
    assert e.value.reason == "dtype"

    wider = make_delta(rng)
    wider["dense/bias"] = wider["dense/bias"].astype(np.float64)
    with pytest.raises(UpdateRejected, match="float64") as e:
        session.submit(wider, num_samples=1)
    assert e.value.reason == "dtype"

    renamed = make_delta(rng)
    renamed["dense/b"] = renamed.pop("dense/bias")
    with pytest.raises(UpdateRejected, match=r"missing \['dense/bias'\]") as e:
        session.submit(renamed, num_samples=1)
    assert e.value.reason == "names"

    with pytest.raises(UpdateRejected) as e:
        session.submit(np.zeros(15, np.float32), num_samples=1)
    assert e.value.reason == "type"

    assert session.pending == 0 and session.total_weight == 0.0


def test_all_problems_of_one_update_are_reported_together():
    rng = np.random.default_rng(5)
    session = GradientAggregator(S.FEDAVG).start(make_model(rng))
    bad = make_delta(rng)
    bad["dense/kernel"][0, 0] = np.nan
    bad["dense/bias"] = np.zeros(2, np.float32)
    with pytest.raises(UpdateRejected) as e:
        session.submit(bad, num_samples=1)
    assert "NaN" in str(e.value) and "shape (2,)" in str(e.value)


# -- the streaming session -------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    samples=st.lists(st.integers(1, 10_000), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_streaming_fedavg_equals_the_batch_weighted_mean(samples, seed):
    rng = np.random.default_rng(seed)
    model = make_model(rng)
    ups = [make_delta(rng) for _ in samples]
    agg = GradientAggregator(S.FEDAVG)
    session = agg.start(model)
    for u, n in zip(ups, samples, strict=True):
        assert session.submit(u, num_samples=n) is False
    assert session.pending == len(samples)
    assert session.total_weight == sum(samples)
    assert session.close_round() is True

    total = sum(samples)
    want = {
        k: model[k].astype(np.float64)
        + sum(n * u[k].astype(np.float64) for u, n in zip(ups, samples, strict=True))
        / total
        for k in model
    }
    assert_tree_close(session.model, want)

    # The one-call form runs the same accumulation: identical bits.
    delta = agg.aggregate(ups, samples)
    assert_tree_identical(
        {k: (model[k] + delta[k]).astype(np.float32) for k in model}, session.model
    )
    assert session.version == 1 and session.pending == 0


def test_weighted_session_uses_the_explicit_weights_not_the_sample_counts():
    rng = np.random.default_rng(20)
    model = make_model(rng)
    ups = [make_delta(rng) for _ in range(3)]
    session = GradientAggregator(S.WEIGHTED).start(model)
    for u, w, n in zip(ups, [0.5, 0.25, 0.25], [1, 1000, 7], strict=True):
        session.submit(u, num_samples=n, weight=w)
    assert session.total_weight == 1.0
    session.close_round()
    want = {
        k: model[k] + 0.5 * as64(ups[0])[k] + 0.25 * ups[1][k] + 0.25 * ups[2][k]
        for k in model
    }
    assert_tree_close(session.model, want)


def test_sync_fedavg_with_a_staleness_allowance_discounts_stale_updates():
    # FEDAVG weight = num_samples * s(t), polynomial s(t) = (1 + t)^-0.5.
    rng = np.random.default_rng(23)
    model = make_model(rng)
    fresh, stale = make_delta(rng), make_delta(rng)
    session = GradientAggregator(S.FEDAVG, max_staleness=3).start(model)
    session.submit(fresh, num_samples=10, staleness=0)
    session.submit(stale, num_samples=10, staleness=3)
    assert session.total_weight == pytest.approx(10 + 10 * 0.5)
    session.close_round()
    want = {
        k: model[k] + (10 * as64(fresh)[k] + 5 * as64(stale)[k]) / 15 for k in model
    }
    assert_tree_close(session.model, want)


def test_close_round_with_nothing_keeps_the_model():
    rng = np.random.default_rng(6)
    model = make_model(rng)
    session = GradientAggregator(S.FEDAVG).start(model)
    assert session.close_round() is False
    assert session.version == 0
    assert_tree_identical(session.model, model)


def test_session_copies_the_model_it_is_given():
    rng = np.random.default_rng(7)
    model = make_model(rng)
    before = {k: v.copy() for k, v in model.items()}
    session = GradientAggregator(S.FEDAVG).start(model)
    session.submit(make_delta(rng), num_samples=3)
    session.close_round()
    assert_tree_identical(model, before)


@pytest.mark.parametrize(
    ("kwargs", "reason", "pattern"),
    [
        ({"num_samples": 0}, "samples", "num_samples=0"),
        ({"num_samples": -5}, "samples", "num_samples=-5"),
        ({"num_samples": True}, "samples", "num_samples=True"),
        ({"num_samples": 2.5}, "samples", "num_samples=2.5"),
        ({"num_samples": 1, "staleness": 1}, "stale", "1 versions stale.*at most 0"),
        ({"num_samples": 1, "staleness": -1}, "stale", "staleness=-1"),
        ({"num_samples": 1, "weight": 0.0}, "weight", "weight=0.0"),
        ({"num_samples": 1, "weight": float("nan")}, "weight", "weight=nan"),
    ],
)
def test_submit_rejects_bad_metadata(kwargs, reason, pattern):
    rng = np.random.default_rng(8)
    session = GradientAggregator(S.FEDAVG).start(make_model(rng))
    with pytest.raises(UpdateRejected, match=pattern) as e:
        session.submit(make_delta(rng), **kwargs)
    assert e.value.reason == reason
    assert session.pending == 0


def test_weighted_requires_an_explicit_weight():
    rng = np.random.default_rng(9)
    session = GradientAggregator(S.WEIGHTED).start(make_model(rng))
    with pytest.raises(UpdateRejected, match="explicit weight") as e:
        session.submit(make_delta(rng), num_samples=10)
    assert e.value.reason == "weight"


def test_a_rejected_update_changes_nothing():
    rng = np.random.default_rng(10)
    model = make_model(rng)
    session = GradientAggregator(S.FEDAVG).start(model)
    good = make_delta(rng)
    session.submit(good, num_samples=2)
    bad = make_delta(rng)
    bad["dense/bias"][1] = np.inf
    with pytest.raises(UpdateRejected):
        session.submit(bad, num_samples=1000)
    assert session.pending == 1 and session.total_weight == 2.0
    session.close_round()
    want = {k: model[k] + good[k] for k in model}
    assert_tree_close(session.model, want)


def test_fedavg_memory_does_not_grow_with_participants():
    # 2**18 float32 parameters = 1 MiB.  Updates are made and dropped one at a
    # time, as the daemon receives them; the session must not keep them.
    n = 1 << 18
    model = {"w": np.zeros(n, np.float32)}
    rng = np.random.default_rng(11)
    proto = rng.normal(size=n).astype(np.float32)

    def peak_bytes(participants: int) -> int:
        session = GradientAggregator(S.FEDAVG).start(model)
        session.submit({"w": proto}, num_samples=1)  # imports the kernels
        session.discard_round()
        tracemalloc.start()
        tracemalloc.reset_peak()
        for i in range(participants):
            update = {"w": proto * np.float32(i % 7 - 3)}
            session.submit(update, num_samples=i + 1)
            del update
        session.close_round()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    few, many = peak_bytes(4), peak_bytes(64)
    model_bytes = 4 * n
    # The accumulator (1x) plus one live update (1x) plus block scratch.
    assert few < 2.5 * model_bytes
    assert many < few + model_bytes // 8, (few, many)


# -- asynchronous strategies -----------------------------------------------


def poly(t: int, a: float = 0.5) -> float:
    return (1.0 + t) ** -a


def test_fedasync_mixes_each_update_in_with_polynomial_staleness():
    rng = np.random.default_rng(12)
    model = make_model(rng)
    agg = GradientAggregator(S.FEDASYNC, mixing=0.6, staleness_a=0.5)
    assert agg.is_async and agg.max_staleness is None
    session = agg.start(model)
    want = as64(model)
    for t in [0, 3, 0, 12, 1]:
        u = make_delta(rng)
        assert session.submit(u, num_samples=50, staleness=t) is True
        want = {k: want[k] + 0.6 * poly(t) * u[k] for k in want}
    assert session.version == 5 and session.pending == 0
    assert session.close_round() is False
    assert_tree_close(session.model, want)


def test_hinge_staleness_matches_the_paper_formula():
    agg = GradientAggregator(
        S.FEDASYNC, staleness_fn="hinge", staleness_a=0.5, staleness_b=4
    )
    # s(t) = 1 for t <= b, else 1 / (a (t - b) + 1).
    assert [agg.staleness_factor(t) for t in (0, 4, 6, 14)] == [1.0, 1.0, 0.5, 1 / 6]
    assert GradientAggregator(S.FEDASYNC, staleness_fn="constant").staleness_factor(
        99
    ) == (1.0)
    assert GradientAggregator(S.FEDASYNC).staleness_factor(3) == pytest.approx(0.5)


def test_fedbuff_steps_every_k_updates_by_the_staleness_weighted_mean():
    rng = np.random.default_rng(13)
    model = make_model(rng)
    agg = GradientAggregator(S.FEDBUFF, buffer_size=3, server_lr=0.5)
    session = agg.start(model)
    want = as64(model)
    buffer = []
    stale = [0, 2, 1, 5, 0, 3, 7]
    changed = []
    for t in stale:
        u = make_delta(rng)
        changed.append(session.submit(u, num_samples=1, staleness=t))
        buffer.append((t, u))
        if len(buffer) == 3:
            step = {k: sum(poly(s) * v[k] for s, v in buffer) / 3 for k in want}
            want = {k: want[k] + 0.5 * step[k] for k in want}
            buffer = []
    assert changed == [False, False, True, False, False, True, False]
    assert session.pending == 1 and session.version == 2
    assert_tree_close(session.model, want)

    assert session.close_round() is True  # the partial buffer of one
    ((t, u),) = buffer
    want = {k: want[k] + 0.5 * poly(t) * u[k] for k in want}
    assert_tree_close(session.model, want)
    assert session.version == 3 and session.pending == 0


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(1, 5),
    stale=st.lists(st.integers(0, 20), min_size=1, max_size=12),
    fn=st.sampled_from(["polynomial", "hinge", "constant"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fedbuff_matches_a_reference_for_any_buffer_and_staleness(k, stale, fn, seed):
    rng = np.random.default_rng(seed)
    model = make_model(rng)
    agg = GradientAggregator(S.FEDBUFF, buffer_size=k, staleness_fn=fn)
    session = agg.start(model)
    want, buffer = as64(model), []
    for t in stale:
        u = make_delta(rng)
        session.submit(u, num_samples=3, staleness=t)
        buffer.append(agg.staleness_factor(t) * as64(u)["dense/bias"])
        if len(buffer) == k:
            want["dense/bias"] = want["dense/bias"] + sum(buffer) / k
            buffer = []
    session.close_round()
    if buffer:
        want["dense/bias"] = want["dense/bias"] + sum(buffer) / len(buffer)
    assert session.version == -(-len(stale) // k)
    np.testing.assert_allclose(
        session.model["dense/bias"], want["dense/bias"], rtol=1e-5, atol=1e-5
    )


def test_async_staleness_limit_rejects_with_reason():
    rng = np.random.default_rng(14)
    session = GradientAggregator(S.FEDBUFF, max_staleness=3).start(make_model(rng))
    session.submit(make_delta(rng), num_samples=1, staleness=3)
    with pytest.raises(UpdateRejected, match="4 versions stale.*at most 3") as e:
        session.submit(make_delta(rng), num_samples=1, staleness=4)
    assert e.value.reason == "stale" and e.value.value == 4
    assert session.pending == 1


# -- server optimizers -----------------------------------------------------


def run_rounds(agg: GradientAggregator, model: dict, rounds: list[list[dict]]):
    session = agg.start(model)
    for ups in rounds:
        for u in ups:
            session.submit(u, num_samples=1)
        session.close_round()
    return session


def test_server_momentum_matches_reference():
    rng = np.random.default_rng(15)
    model = make_model(rng)
    rounds = [[make_delta(rng) for _ in range(3)] for _ in range(4)]
    session = run_rounds(
        GradientAggregator(S.FEDAVG, server_lr=0.7, server_momentum=0.9), model, rounds
    )
    x, v = as64(model), {k: 0.0 for k in model}
    for ups in rounds:
        mean = {k: sum(u[k] for u in ups) / 3 for k in x}
        v = {k: 0.9 * v[k] + mean[k] for k in x}
        x = {k: x[k] + 0.7 * v[k] for k in x}
    assert_tree_close(session.model, x, rtol=1e-4, atol=1e-5)
    velocity = {
        k.removeprefix("momentum/"): a for k, a in session.optimizer_state.items()
    }
    assert_tree_close(velocity, v, rtol=1e-4, atol=1e-5)


def test_fedadam_matches_reddi_algorithm_2():
    rng = np.random.default_rng(16)
    model = make_model(rng)
    rounds = [[make_delta(rng, 0.1) for _ in range(2)] for _ in range(5)]
    agg = GradientAggregator(
        S.FEDAVG,
        server_optimizer="adam",
        server_lr=0.01,
        adam_betas=(0.9, 0.99),
        adam_eps=1e-3,
    )
    session = run_rounds(agg, model, rounds)
    x = as64(model)
    m = {k: 0.0 for k in x}
    v = {k: 0.0 for k in x}
    for ups in rounds:
        d = {k: sum(u[k] for u in ups) / 2 for k in x}
        m = {k: 0.9 * m[k] + 0.1 * d[k] for k in x}
        v = {k: 0.99 * v[k] + 0.01 * d[k] ** 2 for k in x}
        x = {k: x[k] + 0.01 * m[k] / (np.sqrt(v[k]) + 1e-3) for k in x}
    assert_tree_close(session.model, x, rtol=1e-4, atol=1e-5)


# -- determinism and restore -----------------------------------------------


@pytest.mark.parametrize("strategy", list(AggregationStrategy))
def test_same_submits_give_identical_bits(strategy):
    rng = np.random.default_rng(17)
    model = make_model(rng)
    script = [
        (make_delta(rng), int(rng.integers(1, 100)), int(rng.integers(0, 3)))
        for _ in range(14)
    ]
    kwargs = {"server_momentum": 0.5}
    if not strategy.is_async:
        kwargs["max_staleness"] = 2

    def play() -> dict:
        session = GradientAggregator(strategy, buffer_size=4, **kwargs).start(model)
        for i, (u, n, t) in enumerate(script):
            session.submit(u, num_samples=n, staleness=t, weight=float(n))
            if i % 7 == 6:
                session.close_round()
        return session.model

    first, second = play(), play()
    assert_tree_identical(first, second)
    assert not all(np.array_equal(first[k], model[k]) for k in model)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_restore_from_checkpoint_continues_identically(optimizer):
    rng = np.random.default_rng(18)
    model = make_model(rng)
    rounds = [[make_delta(rng) for _ in range(3)] for _ in range(4)]
    kwargs = {"server_optimizer": optimizer, "server_lr": 0.3}
    if optimizer == "sgd":
        kwargs["server_momentum"] = 0.8
    agg = GradientAggregator(S.FEDAVG, **kwargs)
    straight = run_rounds(agg, model, rounds)

    first = run_rounds(agg, model, rounds[:2])
    snapshot = {k: v.copy() for k, v in first.model.items()}
    state = {k: v.copy() for k, v in first.optimizer_state.items()}
    assert state  # momentum or adam buffers exist
    resumed = GradientAggregator(S.FEDAVG, **kwargs).start(
        snapshot, version=first.version, optimizer_state=state
    )
    for ups in rounds[2:]:
        for u in ups:
            resumed.submit(u, num_samples=1)
        resumed.close_round()
    assert resumed.version == straight.version == 4
    assert_tree_identical(resumed.model, straight.model)


def test_optimizer_state_of_the_wrong_shape_is_refused():
    rng = np.random.default_rng(19)
    model = make_model(rng)
    agg = GradientAggregator(S.FEDAVG, server_momentum=0.9)
    with pytest.raises(ValueError, match="missing"):
        agg.start(model, optimizer_state={"momentum/dense/bias": np.zeros(3)})


# -- options ---------------------------------------------------------------


def test_strategy_names_parse_in_any_case():
    assert AggregationStrategy.parse("Trimmed-Mean") is S.TRIMMED_MEAN
    assert GradientAggregator("multi_krum").strategy is S.MULTI_KRUM
    with pytest.raises(ValueError, match="'fedsgd' is unknown.*FEDAVG"):
        GradientAggregator("fedsgd")


def test_invalid_options_are_all_named_at_once():
    with pytest.raises(ValueError) as e:
        GradientAggregator(
            S.FEDAVG,
            trim_ratio=0.5,
            mixing=0.0,
            server_optimizer="rmsprop",
            staleness_fn="exp",
            buffer_size=0,
        )
    message = str(e.value)
    for part in ("trim_ratio=0.5", "mixing=0.0", "rmsprop", "'exp'", "buffer_size=0"):
        assert part in message


def test_sync_strategies_accept_only_fresh_updates_by_default():
    assert GradientAggregator(S.FEDAVG).max_staleness == 0
    assert GradientAggregator(S.MEDIAN).max_staleness == 0
    assert GradientAggregator(S.FEDAVG, max_staleness=2).max_staleness == 2
    assert GradientAggregator(S.FEDBUFF).max_staleness is None
    assert not math.isnan(GradientAggregator(S.FEDBUFF).staleness_factor(10**6))
