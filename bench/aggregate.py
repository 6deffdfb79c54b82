"""Ingest rate of the aggregation strategies, in process, against plain NumPy.

For a float32 model of ``--params`` parameters, every strategy takes
``--participants`` dense updates through ``AggregationSession.submit`` and one
``close_round``.  The baseline, measured in the same run on the same arrays,
is the bare arithmetic of a weighted mean, ``acc += w * x`` in NumPy with no
validation: the ratio says what validation, the float64-formed terms and the
bookkeeping cost.  The robust strategies keep every update, so they run with
fewer participants (``--robust-participants``).  A last row feeds 1 % top-k
compressed updates (``agent.FederatedClient``) through the scatter-add kernel;
its MB/s counts the encoded bytes.

Memory: the tracemalloc peak of a FEDAVG session over a round, as a multiple
of the float32 model size, for 10 and for 100 participants.

Each rate is the best of ``REPEATS`` runs: the machine is shared and noisy.

    PYTHONPATH=. python bench/aggregate.py [--params 1000000]
"""

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np

import agent.kernels
from agent import CompressedUpdate, CompressionConfig, CompressionType, FederatedClient
from ground import AggregationStrategy, GradientAggregator

S = AggregationStrategy
REPEATS = 3


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def best_rate(count: int, run) -> tuple[float, float]:
    """Best of REPEATS runs of ``run()``: (items/s by wall clock, by CPU time).

    CPU time of this single-threaded process is the steadier "one core"
    figure on a shared machine; the ratios use it.
    """
    wall = cpu = float("inf")
    for _ in range(REPEATS):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        wall = min(wall, time.perf_counter() - w0)
        cpu = min(cpu, time.process_time() - c0)
    return count / wall, count / max(cpu, 1e-9)


def baseline(updates: list[np.ndarray], participants: int) -> None:
    acc = np.zeros_like(updates[0])
    for i in range(participants):
        acc += np.float32(i + 1) * updates[i % len(updates)]
    acc /= np.float32(participants)


def through_session(aggregator, model, updates, participants) -> None:
    session = aggregator.start(model)
    for i in range(participants):
        session.submit(updates[i % len(updates)], num_samples=i + 1)
    session.close_round()


def fedavg_peak(n: int, participants: int, make_update) -> float:
    """Traced peak of a whole FEDAVG round (model copy included) / model bytes."""
    warm = GradientAggregator(S.FEDAVG).start({"w": np.zeros(8, np.float32)})
    warm.submit({"w": np.ones(8, np.float32)}, num_samples=1)  # imports
    tracemalloc.start()
    tracemalloc.reset_peak()
    session = GradientAggregator(S.FEDAVG).start({"w": np.zeros(n, np.float32)})
    for i in range(participants):
        update = make_update(i)  # a new object each time, as off the wire
        session.submit(update, num_samples=i + 1)
        del update
    session.close_round()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / (4 * n)


def row(label: str, count: int, rates, mb: float, base: float, note: str = ""):
    wall, cpu = rates
    print(
        f"{label:<30}{count:>8}{wall:>11.0f}{cpu:>11.0f}{cpu * mb:>10.1f}"
        f"{cpu / base:>10.2f}" + note
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--robust-participants", type=int, default=12)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, p = args.params, args.participants
    dense = [rng.normal(size=n).astype(np.float32) for _ in range(8)]
    dense_updates = [{"w": u} for u in dense]
    model = {"w": np.zeros(n, np.float32)}
    mb = 4 * n / 1e6

    print(
        f"model: {n} float32 parameters ({mb:.1f} MB); {cpu_model()}; kernels "
        f"{'compiled' if agent.kernels.accelerated else 'NumPy twin'}"
    )
    print(
        f"{'strategy':<30}{'updates':>8}{'upd/s wall':>11}{'upd/s CPU':>11}"
        f"{'MB/s CPU':>10}{'vs numpy':>10}"
    )
    base_rates = best_rate(p, lambda: baseline(dense, p))
    base = base_rates[1]
    row("numpy acc += w*x (baseline)", p, base_rates, mb, base)

    cases = [
        (S.FEDAVG, {}, p),
        (S.FEDASYNC, {}, p),
        (S.FEDBUFF, {}, p),
        (S.FEDAVG, {"server_momentum": 0.9}, p),
        (S.FEDAVG, {"server_optimizer": "adam"}, p),
        (S.MEDIAN, {}, args.robust_participants),
        (S.TRIMMED_MEAN, {}, args.robust_participants),
        (S.KRUM, {"byzantine_f": 2}, args.robust_participants),
        (S.MULTI_KRUM, {"byzantine_f": 2}, args.robust_participants),
    ]
    for strategy, kwargs, count in cases:
        aggregator = GradientAggregator(strategy, **kwargs)
        label = strategy.name + "".join(f" {k}={v}" for k, v in kwargs.items())
        rate = best_rate(
            count,
            lambda a=aggregator, c=count: through_session(a, model, dense_updates, c),
        )
        row(label, count, rate, mb, base)

    config = CompressionConfig(CompressionType.TOPK).with_sparsity(0.99)
    sparse = [
        FederatedClient(f"sat-{j}", config).compress({"w": dense[j]})
        for j in range(len(dense))
    ]
    wire_mb = sparse[0].wire_nbytes / 1e6
    aggregator = GradientAggregator(S.FEDAVG)
    rate = best_rate(p, lambda: through_session(aggregator, model, sparse, p))
    row(
        "FEDAVG, 1% top-k compressed",
        p,
        rate,
        wire_mb,
        base,
        f"   ({sparse[0].compression_ratio:.0f}x smaller on the wire)",
    )

    def fresh_dense(i: int) -> dict:
        return {"w": dense[0] * np.float32(1 + i % 3)}

    def fresh_sparse(i: int):
        return CompressedUpdate.decode(sparse[i % len(sparse)].encode())

    for label, make in (("dense", fresh_dense), ("1% top-k", fresh_sparse)):
        few, many = fedavg_peak(n, 10, make), fedavg_peak(n, 100, make)
        print(
            f"FEDAVG round, {label} updates: peak traced memory {few:.2f}x the "
            f"model with 10 updates, {many:.2f}x with 100 (model copy, "
            "accumulator, one live update)"
        )


if __name__ == "__main__":
    main()
