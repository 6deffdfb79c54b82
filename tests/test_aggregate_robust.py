"""The Byzantine-robust strategies: MEDIAN, TRIMMED_MEAN, KRUM, MULTI_KRUM.

TRIMMED_MEAN is checked against ``scipy.stats.trim_mean`` (an independent
implementation of the same estimator), MEDIAN against ``np.median``, and KRUM
against scores worked out by hand from Blanchard et al. 2017.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from ground import AggregationStrategy, GradientAggregator, NotEnoughUpdates

S = AggregationStrategy

finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 9), st.integers(1, 6)), elements=finite
    )
)
def test_median_is_the_coordinate_wise_median(stack):
    got = GradientAggregator(S.MEDIAN).aggregate(list(stack))
    np.testing.assert_array_equal(got, np.median(stack, axis=0))


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 12), st.integers(1, 6)), elements=finite
    ),
    st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.34, 0.49]),
)
def test_trimmed_mean_matches_scipy(stack, ratio):
    got = GradientAggregator(S.TRIMMED_MEAN, trim_ratio=ratio).aggregate(list(stack))
    want = stats.trim_mean(stack, ratio, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)


def test_median_of_dict_updates_per_tensor():
    ups = [
        {"a": np.array([1.0, 10.0], np.float32), "b": np.array([[5.0]], np.float32)},
        {"a": np.array([2.0, -4.0], np.float32), "b": np.array([[1.0]], np.float32)},
        {"a": np.array([9.0, 0.0], np.float32), "b": np.array([[3.0]], np.float32)},
        {"a": np.array([3.0, 1.0], np.float32), "b": np.array([[2.0]], np.float32)},
    ]
    got = GradientAggregator(S.MEDIAN).aggregate(ups)
    np.testing.assert_array_equal(got["a"], [2.5, 0.5])
    np.testing.assert_array_equal(got["b"], [[2.5]])
    assert got["a"].dtype == np.float32


def test_krum_picks_the_update_with_the_hand_computed_lowest_score():
    # Five 1-D updates, f = 1: each score sums the n - f - 2 = 2 smallest
    # squared distances to the others.
    #   x:      0     1     2     4     100
    #   0: d = 1, 4, 16, 10000 -> 1 + 4 = 5
    #   1: d = 1, 1, 9, 9801   -> 1 + 1 = 2   <- lowest
    #   2: d = 4, 1, 4, 9604   -> 1 + 4 = 5
    #   4: d = 16, 9, 4, 9216  -> 4 + 9 = 13
    #   100: 9216 + 9604        = 18820
    ups = [np.array([x]) for x in (0.0, 1.0, 2.0, 4.0, 100.0)]
    assert GradientAggregator(S.KRUM, byzantine_f=1).aggregate(ups)[0] == 1.0
    # MULTI_KRUM with m = 3 averages the three best scores: 1, then 0 and 2
    # (tied at 5).
    got = GradientAggregator(S.MULTI_KRUM, byzantine_f=1, multi_krum_m=3).aggregate(ups)
    assert got[0] == pytest.approx(1.0)
    # The default m is n - f = 4: the three above and 4 (score 13).
    got = GradientAggregator(S.MULTI_KRUM, byzantine_f=1).aggregate(ups)
    assert got[0] == pytest.approx(7.0 / 4)


def test_krum_distance_spans_all_tensors_of_an_update():
    # Tensor "a" alone would pick update 0, but "b" moves it far away.
    ups = [
        {"a": np.array([0.0]), "b": np.array([50.0])},
        {"a": np.array([1.0]), "b": np.array([0.0])},
        {"a": np.array([2.0]), "b": np.array([0.0])},
        {"a": np.array([3.0]), "b": np.array([0.0])},
        {"a": np.array([1.5]), "b": np.array([0.0])},
    ]
    got = GradientAggregator(S.KRUM, byzantine_f=1).aggregate(ups)
    assert got["a"][0] == 1.5 and got["b"][0] == 0.0


def test_krum_with_too_few_updates_says_how_many_it_needs():
    ups = [np.zeros(3)] * 4
    with pytest.raises(NotEnoughUpdates, match=r"more than 2f \+ 2 = 4.*got 4") as e:
        GradientAggregator(S.KRUM, byzantine_f=1).aggregate(ups)
    assert (e.value.received, e.value.required) == (4, 5)


def test_a_krum_session_keeps_its_round_when_it_is_too_small():
    agg = GradientAggregator(S.MULTI_KRUM, byzantine_f=1)
    assert agg.min_updates == 5
    model = {"w": np.zeros(3, np.float32)}
    session = agg.start(model)
    for i in range(4):
        session.submit({"w": np.full(3, i, np.float32)}, num_samples=1)
    with pytest.raises(NotEnoughUpdates):
        session.close_round()
    assert session.pending == 4 and session.version == 0
    session.submit({"w": np.full(3, 4, np.float32)}, num_samples=1)
    assert session.close_round() is True
    assert session.version == 1
    assert session.discard_round() == 0

    session.submit({"w": np.ones(3, np.float32)}, num_samples=1)
    assert session.discard_round() == 1
    assert session.close_round() is False


def test_a_too_small_krum_round_closes_by_median_when_asked():
    session = GradientAggregator(S.KRUM, byzantine_f=1).start(
        {"w": np.zeros(3, np.float32)}
    )
    assert not session.needs_fallback
    rows = [[1.0, 5.0, -2.0], [3.0, 0.0, 7.0], [2.0, 1.0, 100.0]]
    for row in rows:
        session.submit({"w": np.array(row, np.float32)}, num_samples=1)
    assert session.needs_fallback
    assert session.close_round(median_fallback=True) is True
    assert session.version == 1 and session.pending == 0
    np.testing.assert_array_equal(session.model["w"], [2.0, 1.0, 7.0])
    assert not session.needs_fallback


def test_robust_strategies_refuse_unequal_weights():
    with pytest.raises(ValueError, match="MEDIAN weighs every update alike"):
        GradientAggregator(S.MEDIAN).aggregate([np.ones(2)] * 3, [1, 2, 3])
    # Equal weights of any scale are fine.
    got = GradientAggregator(S.MEDIAN).aggregate([np.ones(2)] * 3, [7, 7, 7])
    np.testing.assert_array_equal(got, [1.0, 1.0])


def test_robust_sessions_ignore_claimed_sample_counts():
    # A Byzantine client claiming 10**9 samples gets one vote like everyone.
    model = {"w": np.zeros(4, np.float32)}
    session = GradientAggregator(S.MEDIAN).start(model)
    for value, n in [(1.0, 10), (1.2, 12), (0.9, 9), (1e6, 10**9)]:
        session.submit({"w": np.full(4, value, np.float32)}, num_samples=n)
    session.close_round()
    np.testing.assert_allclose(session.model["w"], 1.1, rtol=1e-6)


# -- Byzantine resistance --------------------------------------------------


def byzantine_round(rng, honest: int, byzantine: int, dim: int):
    """Honest deltas near ``truth`` plus ``byzantine`` huge, coordinated ones."""
    truth = rng.normal(size=dim)
    good = [truth + 0.05 * rng.normal(size=dim) for _ in range(honest)]
    bad = [np.full(dim, 1e4) + rng.normal(size=dim) for _ in range(byzantine)]
    ups = good + bad
    order = rng.permutation(len(ups))
    return truth, [ups[i].astype(np.float32) for i in order]


@pytest.mark.parametrize(
    ("strategy", "kwargs"),
    [
        (S.MEDIAN, {}),
        (S.TRIMMED_MEAN, {"trim_ratio": 0.25}),
        (S.KRUM, {"byzantine_f": 2}),
        (S.MULTI_KRUM, {"byzantine_f": 2}),
    ],
)
def test_robust_strategies_withstand_f_outliers_that_wreck_fedavg(strategy, kwargs):
    rng = np.random.default_rng(21)
    truth, ups = byzantine_round(rng, honest=8, byzantine=2, dim=200)

    fedavg_error = np.abs(GradientAggregator(S.FEDAVG).aggregate(ups) - truth).max()
    assert fedavg_error > 1000

    # The robust estimate stays within the honest spread (0.05 per coordinate).
    robust = GradientAggregator(strategy, **kwargs).aggregate(ups)
    assert np.abs(robust - truth).max() < 0.25

    # The streaming session reaches the same model.
    session = GradientAggregator(strategy, **kwargs).start(
        {"w": np.zeros(200, np.float32)}
    )
    for u in ups:
        session.submit({"w": u}, num_samples=100)
    session.close_round()
    np.testing.assert_array_equal(session.model["w"], robust)


def test_robust_aggregates_of_large_tensors_span_several_blocks():
    # 200_000 elements > one 65_536-element block: the blocked loops must
    # stitch their pieces together correctly.
    rng = np.random.default_rng(22)
    stack = rng.normal(size=(5, 200_000)).astype(np.float32)
    ups = list(stack)
    np.testing.assert_array_equal(
        GradientAggregator(S.MEDIAN).aggregate(ups), np.median(stack, axis=0)
    )
    np.testing.assert_allclose(
        GradientAggregator(S.TRIMMED_MEAN, trim_ratio=0.2).aggregate(ups),
        stats.trim_mean(stack.astype(np.float64), 0.2, axis=0),
        rtol=1e-6,
        atol=1e-7,
    )
    d = ((stack[:, None, :].astype(np.float64) - stack[None]) ** 2).sum(-1)
    scores = [np.sort(np.delete(d[i], i))[:2].sum() for i in range(5)]
    got = GradientAggregator(S.KRUM, byzantine_f=1).aggregate(ups)
    np.testing.assert_array_equal(got, stack[int(np.argmin(scores))])
