"""``python -m agent profile``: measure a model's layers on this device.

Writes the layer profiles the partition optimizer reads
(``ModelProfile.from_measurements``): per layer the weights (MB), the
analytic flops, the output size (bytes per sample), the peak memory the
forward pass allocated (MB per sample, from ``tracemalloc``, which NumPy
reports its buffers to) and the median wall time (ms per batch).
"""

import argparse
import json
import platform
import socket
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from agent._cli import CommandError

PROFILE_FORMAT = "orbitfl-profile/1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model spec (JSON)")
    parser.add_argument("--weights", help="weights .npz (default: from the spec)")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per batch")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed runs per layer (median kept)"
    )
    parser.add_argument("--out", help="write the JSON here (default: stdout)")


def profile_model(model, batch_size: int, repeats: int) -> dict:
    """Time and measure every layer of ``model``; return the profile document."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, *model.input_shape)).astype(np.float32)
    rows = []
    analytic = model.layer_profiles()
    total_ms = 0.0
    total_flops = 0.0
    for i in range(len(model)):
        model.forward(x, i, i + 1)  # warm caches and lazy allocations
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.forward(x, i, i + 1)
            times.append(time.perf_counter() - t0)
        tracemalloc.start()
        y = model.forward(x, i, i + 1)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        measured_ms = float(np.median(times) * 1e3)
        row = dict(analytic[i])
        # the input batch is alive during the layer but allocated before it
        row["activation_mb"] = (peak + x.nbytes) / batch_size / 1e6
        row["measured_ms"] = measured_ms / batch_size  # per sample
        rows.append(row)
        total_ms += measured_ms
        total_flops += analytic[i]["flops"] * batch_size
        x = y
    achieved = total_flops / (total_ms * 1e-3) / 1e12 if total_ms > 0 else 0.0
    return {
        "format": PROFILE_FORMAT,
        "model": model.name,
        "batch_size": batch_size,
        "repeats": repeats,
        "input_bytes": float(model.input_bytes),
        "device": {
            "hostname": socket.gethostname(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "numpy": np.__version__,
            "achieved_tflops": achieved,
        },
        "layers": rows,
    }


def main(args: argparse.Namespace) -> int:
    from agent._nn import ModelSpecError, load_model

    if args.batch_size < 1 or args.repeats < 1:
        raise CommandError(
            f"--batch-size {args.batch_size} and --repeats {args.repeats} must be >= 1"
        )
    try:
        model = load_model(args.model, args.weights)
    except ModelSpecError as exc:
        raise CommandError(str(exc)) from exc
    doc = profile_model(model, args.batch_size, args.repeats)
    text = json.dumps(doc, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    return 0
