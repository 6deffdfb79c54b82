"""Ingest rate of the aggregation strategies, in process, against plain NumPy.

For a float32 model of ``--params`` parameters, every strategy takes
``--participants`` dense updates through ``AggregationSession.submit`` and one
``close_round``.  The baseline, measured in the same run on the same arrays,
is the bare arithmetic of a weighted mean, ``acc += w * x`` with NumPy and no
validation: the ratio says what validation, blocking and bookkeeping cost.
The robust strategies keep every update, so they run with fewer participants
(``--robust-participants``).  When ``agent`` provides compressed updates, a
row for 1 % top-k updates through the scatter-add kernel is added.

Memory: the tracemalloc peak of a FEDAVG session over a round, as a multiple
of the float32 model size, for 10 and for 10x as many participants.

    PYTHONPATH=. python bench/aggregate.py [--params 1000000]
"""

import argparse
import platform
import time
import tracemalloc

import numpy as np

from ground import AggregationStrategy, GradientAggregator

S = AggregationStrategy


def make_updates(rng, n: int, distinct: int) -> list[np.ndarray]:
    return [rng.normal(size=n).astype(np.float32) for _ in range(distinct)]


def baseline_rate(updates: list[np.ndarray], participants: int) -> float:
    acc = np.zeros_like(updates[0])
    start = time.perf_counter()
    for i in range(participants):
        acc += np.float32(i + 1) * updates[i % len(updates)]
    acc /= np.float32(participants)
    return participants / (time.perf_counter() - start)


def session_rate(
    aggregator: GradientAggregator, updates: list, participants: int
) -> float:
    session = aggregator.start({"w": np.zeros(updates[0].size, np.float32)})
    start = time.perf_counter()
    for i in range(participants):
        session.submit({"w": updates[i % len(updates)]}, num_samples=i + 1)
    session.close_round()
    return participants / (time.perf_counter() - start)


def compressed_rate(n: int, participants: int, rng) -> tuple[float, float] | None:
    """(sparse updates/s, dense-equivalent) for 1 % top-k, or None if absent."""
    try:
        from agent import CompressionConfig, CompressionType, FederatedClient
    except ImportError:
        return None
    config = CompressionConfig(CompressionType.TOPK).with_sparsity(0.99)
    updates = []
    for j in range(8):
        client = FederatedClient(f"sat-{j}", config)
        updates.append(client.compress({"w": rng.normal(size=n).astype(np.float32)}))
    aggregator = GradientAggregator(S.FEDAVG)
    session = aggregator.start({"w": np.zeros(n, np.float32)})
    start = time.perf_counter()
    for i in range(participants):
        session.submit(updates[i % len(updates)], num_samples=i + 1)
    session.close_round()
    return participants / (time.perf_counter() - start), float(
        updates[0].compression_ratio
    )


def fedavg_peak(n: int, participants: int, update: np.ndarray) -> float:
    session = GradientAggregator(S.FEDAVG).start({"w": np.zeros(n, np.float32)})
    tracemalloc.start()
    tracemalloc.reset_peak()
    for i in range(participants):
        fresh = update * np.float32(1 + i % 3)  # a new array, as off the wire
        session.submit({"w": fresh}, num_samples=i + 1)
        del fresh
    session.close_round()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / (4 * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--robust-participants", type=int, default=12)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.params
    updates = make_updates(rng, n, distinct=8)

    print(
        f"model: {n} float32 parameters ({4 * n / 1e6:.1f} MB); {platform.processor()}"
    )
    base = baseline_rate(updates, args.participants)
    print(
        f"{'strategy':<28}{'updates':>8}{'updates/s':>12}{'MB/s':>10}{'vs numpy':>10}"
    )
    print(
        f"{'numpy acc += w*x (baseline)':<28}{args.participants:>8}{base:>12.0f}"
        f"{base * 4 * n / 1e6:>10.0f}{1.0:>10.2f}"
    )
    rows = [
        (S.FEDAVG, {}, args.participants),
        (S.WEIGHTED, {}, args.participants),
        (S.FEDASYNC, {}, args.participants),
        (S.FEDBUFF, {}, args.participants),
        (S.FEDAVG, {"server_momentum": 0.9}, args.participants),
        (S.FEDAVG, {"server_optimizer": "adam"}, args.participants),
        (S.MEDIAN, {}, args.robust_participants),
        (S.TRIMMED_MEAN, {}, args.robust_participants),
        (S.KRUM, {"byzantine_f": 2}, args.robust_participants),
        (S.MULTI_KRUM, {"byzantine_f": 2}, args.robust_participants),
    ]
    for strategy, kwargs, participants in rows:
        if strategy is S.WEIGHTED:
            continue  # same path as FEDAVG with explicit weights
        label = strategy.name + "".join(f" {k}={v}" for k, v in kwargs.items())
        rate = session_rate(
            GradientAggregator(strategy, **kwargs), updates, participants
        )
        print(
            f"{label:<28}{participants:>8}{rate:>12.0f}{rate * 4 * n / 1e6:>10.0f}"
            f"{rate / base:>10.2f}"
        )
    sparse = compressed_rate(n, args.participants, rng)
    if sparse is None:
        print("FEDAVG 1% top-k: agent has no compression API yet, row skipped")
    else:
        rate, ratio = sparse
        print(
            f"{'FEDAVG 1% top-k compressed':<28}{args.participants:>8}{rate:>12.0f}"
            f"{rate * 4 * n / ratio / 1e6:>10.1f}{rate / base:>10.2f}"
            f"   (wire ratio {ratio:.0f}x)"
        )

    few = fedavg_peak(n, 10, updates[0])
    many = fedavg_peak(n, 100, updates[0])
    print(
        f"FEDAVG peak traced memory / model size: 10 updates {few:.2f}x, "
        f"100 updates {many:.2f}x (one live update of 1x included)"
    )


if __name__ == "__main__":
    main()
