"""``python -m agent compress-demo``: every compression type on a real-sized
gradient, with wire size, ratio and time."""

import argparse
import logging
import time

import numpy as np

from agent import kernels
from agent._cli import CommandError
from agent._compression import CompressedUpdate, FederatedClient
from agent._compression_config import CompressionConfig, CompressionType

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--elements",
        type=float,
        default=4e6,
        help="gradient length (default 4e6, e.g. a small CNN)",
    )
    parser.add_argument(
        "--sparsity", type=float, default=0.99, help="fraction left out (0.99)"
    )
    parser.add_argument("--bits", type=int, default=8, help="quantization bits")
    parser.add_argument(
        "--value-dtype", default="float32", help="value dtype for sparse types"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds to time")
    parser.add_argument("--seed", type=int, default=0)


def _gradient(n: int, seed: int) -> np.ndarray:
    """A heavy-tailed synthetic gradient: layers of different scales."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(n).astype(np.float32)
    scales = rng.lognormal(-4, 1.5, size=-(-n // 65536))
    g *= np.repeat(scales, 65536)[:n].astype(np.float32)
    return g


def main(args: argparse.Namespace) -> int:
    n = int(args.elements)
    if not 1 <= n <= 2**31:
        raise CommandError(f"--elements {args.elements} must be in [1, 2**31]")
    try:
        base = (
            CompressionConfig()
            .with_sparsity(args.sparsity)
            .with_bits(args.bits)
            .with_value_dtype(args.value_dtype)
        )
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc)) from exc
    if args.rounds < 1:
        raise CommandError(f"--rounds {args.rounds} must be at least 1")

    backend = "compiled" if kernels.accelerated else "NumPy twin"
    logger.info("compressing a %d-element float32 gradient on the %s", n, backend)
    grads = [_gradient(n, args.seed + r) for r in range(args.rounds)]
    print(
        f"gradient: {n:,} float32 elements ({4 * n / 1e6:.1f} MB dense), kernels: "
        f"{backend}, sparsity {args.sparsity}, {args.bits}-bit, rounds {args.rounds}"
    )
    print()
    head = (
        f"{'type':<15} {'kept':>10} {'wire bytes':>12} {'B/kept':>7} {'ratio':>8} "
        f"{'compress ms':>12} {'decode+add ms':>14} {'rel. error':>10}"
    )
    print(head)
    print("-" * len(head))
    for method in CompressionType:
        cfg = CompressionConfig(
            method,
            sparsity=base.sparsity,
            bits=base.bits,
            value_dtype=base.value_dtype,
        )
        client = FederatedClient("demo-sat", cfg)
        comp_s, dec_s = [], []
        for r, g in enumerate(grads):
            t0 = time.perf_counter()
            update = client.compress(g, round_index=r)
            data = update.encode()
            comp_s.append(time.perf_counter() - t0)
            acc = np.zeros(n, np.float32)
            t0 = time.perf_counter()
            CompressedUpdate.decode(data, max_elements=n).add_to({"gradient": acc}, 1.0)
            dec_s.append(time.perf_counter() - t0)
        err = float(np.linalg.norm(acc - grads[-1]) / np.linalg.norm(grads[-1]))
        kept = update.kept_elements
        print(
            f"{method.value:<15} {kept:>10,} {len(data):>12,} "
            f"{len(data) / max(kept, 1):>7.3f} {update.compression_ratio:>7.1f}x "
            f"{1e3 * min(comp_s):>12.1f} {1e3 * min(dec_s):>14.1f} {err:>10.3f}"
        )
    print()
    print(
        "ratio = dense float32 bytes / encoded bytes; B/kept = encoded bytes per "
        "element whose value travels; rel. error = |decoded - gradient| / "
        "|gradient| for the last round (error feedback carries the rest into the "
        "next round)"
    )
    return 0
