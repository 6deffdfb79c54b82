"""Benchmark the compression kernels against a memory copy of the same array.

Run: ``python bench/kernels.py [--sizes 1e5,1e6,1e7] [--repeat 7]``.

Every row is the best of ``--repeat`` runs of the CPU time of the calling
thread (steadier than wall time on a shared machine; every kernel here runs
on that one thread), reported as elements per second
and as a ratio to ``np.copyto`` of the same float32 array measured in the same
run (the machine is shared and noisy; ratios travel better than rates).  The
error-feedback kernels get a fresh copy of the same residual before each run,
outside the timed region.  "numpy" is the NumPy twin; "argpartition" is the
plain NumPy top-k an implementer would write first; scatter-add is compared
with a dense NumPy add of the same n.
"""

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.kernels import backends  # noqa: E402


def best_time(fn, repeat: int, setup=None) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return min(times)


def argpartition_ef_topk(r: np.ndarray, g: np.ndarray, k: int):
    """The straightforward NumPy error-feedback top-k."""
    np.add(r, g, out=r)
    idx = np.argpartition(np.abs(r), r.size - k)[r.size - k :]
    idx.sort()
    vals = r[idx]
    r[idx] = 0
    return idx, vals


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_size(n: int, names: list[str], found: dict, repeat: int, have_torch: bool):
    """Print the rows for one vector length."""
    rng = np.random.default_rng(42)
    g = rng.standard_normal(n).astype(np.float32)
    r0 = (0.1 * rng.standard_normal(n)).astype(np.float32)
    r = r0.copy()
    dst = np.empty_like(g)
    # outputs preallocated, as for the copy: page faults are not the kernel's
    codes8 = np.empty(n, np.uint8)
    codes4 = np.empty((n + 1) // 2, np.uint8)
    copy_s = best_time(lambda: np.copyto(dst, g), repeat)
    rate0 = n / copy_s

    def row(kernel, backend, seconds, n=n, rate0=rate0):
        rate = n / seconds
        print(
            f"| {n:>9.0e} | {kernel:<34} | {backend:<12} | {rate / 1e6:>9.1f} | "
            f"{rate / rate0:>7.3f} |",
            flush=True,
        )

    def reset():
        np.copyto(r, r0)

    row("memcpy (np.copyto)", "numpy", copy_s)
    for frac in (0.01, 0.001):
        k = max(1, int(n * frac))
        tag = f"{frac:.1%}"
        for b in names:
            m = found[b]
            row(
                f"ef_topk exact k={tag}",
                b,
                best_time(lambda m=m, k=k: m.ef_topk(r, g, k), repeat, reset),
            )
        row(
            f"ef_topk exact k={tag}",
            "argpartition",
            best_time(lambda k=k: argpartition_ef_topk(r, g, k), repeat, reset),
        )
        if have_torch:
            import torch

            tg = torch.from_numpy(g)
            row(
                f"topk k={tag}",
                "torch.topk",
                best_time(lambda k=k, tg=tg: torch.topk(tg.abs(), k), repeat),
            )
        for b in names:
            m = found[b]
            row(
                f"ef_threshold_topk k={tag}",
                b,
                best_time(
                    lambda m=m, k=k: m.ef_threshold_topk(r, g, k, 1), repeat, reset
                ),
            )
        for b in names:
            m = found[b]
            row(
                f"topk (no EF) k={tag}",
                b,
                best_time(lambda m=m, k=k: m.topk(g, k), repeat),
            )
    for stochastic in (False, True):
        label = "stochastic" if stochastic else "nearest"
        for b in names:
            m = found[b]
            row(
                f"quantize 8-bit {label}",
                b,
                best_time(
                    lambda m=m, s=stochastic: m.quantize(g, 8, 1024, s, 3, out=codes8),
                    repeat,
                ),
            )
        for b in names:
            m = found[b]
            row(
                f"ef_quantize 8-bit {label}",
                b,
                best_time(
                    lambda m=m, s=stochastic: m.ef_quantize(
                        r, g, 8, 1024, s, 3, out=codes8
                    ),
                    repeat,
                    reset,
                ),
            )
    for b in names:
        m = found[b]
        row(
            "ef_quantize 4-bit nearest",
            b,
            best_time(
                lambda m=m: m.ef_quantize(r, g, 4, 1024, False, 3, out=codes4),
                repeat,
                reset,
            ),
        )
    for b in names:
        m = found[b]
        row(
            "ef_randomk k=1%",
            b,
            best_time(
                lambda m=m: m.ef_randomk(r, g, max(1, n // 100), 5),
                repeat,
                reset,
            ),
        )
    for b in names:
        m = found[b]
        row("ef_sign", b, best_time(lambda m=m: m.ef_sign(r, g), repeat, reset))

    # subnormals must not slow anything down: same kernels, tiny inputs
    sub = (g * np.float32(1e-39)).astype(np.float32)
    rs0 = (r0 * np.float32(1e-39)).astype(np.float32)
    rs = rs0.copy()
    if "compiled" in found:
        m = found["compiled"]
        row(
            "ef_topk k=1% (subnormal input)",
            "compiled",
            best_time(
                lambda: m.ef_topk(rs, sub, max(1, n // 100)),
                repeat,
                lambda: np.copyto(rs, rs0),
            ),
        )
        row(
            "quantize 8-bit (subnormal input)",
            "compiled",
            best_time(lambda: m.quantize(sub, 8, 1024, False, 3, out=codes8), repeat),
        )

    # the ground's hot path: add a 1% sparse update into a dense accumulator
    k = max(1, n // 100)
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.uint32)
    vals = rng.standard_normal(k).astype(np.float32)
    acc = np.zeros(n, np.float32)
    dense = np.zeros(n, np.float32)
    dense[idx] = vals
    dense_s = best_time(lambda: np.add(acc, dense, out=acc), repeat)
    print(
        f"| {n:>9.0e} | {'dense add (acc += update), numpy':<34} | "
        f"{'numpy':<12} | {n / dense_s / 1e6:>9.1f} | {'1.000':>7} |"
    )
    for b in names:
        m = found[b]
        t = best_time(lambda m=m: m.scatter_add(acc, idx, vals, 0.5), repeat)
        print(
            f"| {n:>9.0e} | {'scatter_add 1% (speedup vs dense)':<34} | "
            f"{b:<12} | {n / t / 1e6:>9.1f} | {dense_s / t:>6.1f}x |",
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e5,1e6,1e7")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-numpy", action="store_true", help="skip the slow twin")
    args = ap.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    found = backends()
    if "compiled" not in found:
        print("compiled kernels not built; run python setup.py build_ext --inplace")
    names = [b for b in ("compiled", "numpy") if b in found]
    if args.no_numpy and "compiled" in names:
        names = ["compiled"]
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False

    print(f"# {cpu_model()}, {platform.machine()}, numpy {np.__version__}")
    print(
        f"# best of {args.repeat} (thread CPU time); ratio = rate / rate of "
        "np.copyto (float32) of the same n"
    )
    print()
    header = f"| {'n':>9} | {'kernel':<34} | {'backend':<12} | {'Melem/s':>9} | "
    header += f"{'x copy':>7} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")

    for n in sizes:
        bench_size(n, names, found, args.repeat, have_torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
