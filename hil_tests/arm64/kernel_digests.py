"""Print SHA-256 digests of every kernel's outputs on fixed inputs, as JSON.

    python hil_tests/arm64/kernel_digests.py

Run on x86-64 and on arm64, the two JSON documents must be equal, backend by
backend: the flight computer and the ground must compute bit-identical
compressed updates and aggregates.  The inputs are built from integers with
single IEEE operations only (each correctly rounded on every machine), so
they are the same bytes everywhere; their digests are printed too, to tell a
changed input from a changed kernel.

Each case that raises records the exception type instead of a digest, so one
failing kernel shows up as a difference, not as a crash of the whole script.
"""

import hashlib
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

N = 10_007  # prime: no chunk or block size divides it
K = 97
SEED = 1234567


def digest(obj: Any) -> str:
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"nd:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(obj, tuple | list):
        h.update(f"seq:{len(obj)}".encode())
        for x in obj:
            _feed(h, x)
    elif isinstance(obj, dict):
        h.update(f"map:{len(obj)}".encode())
        for k in sorted(obj):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, float | np.floating):
        h.update(f"f:{float(obj).hex()}".encode())
    elif isinstance(obj, bool | int | np.integer | str | None):
        h.update(f"{type(obj).__name__}:{obj}".encode())
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__}")


def inputs(dtype) -> dict[str, np.ndarray]:
    """Fixed vectors with full mantissas, ties, zeros and both signs."""
    rng = np.random.Generator(np.random.PCG64(SEED))  # integer stream: portable
    ints = rng.integers(-(1 << 24), 1 << 24, size=N, dtype=np.int64)
    third = dtype(1.0) / dtype(3.0)
    x = ints.astype(dtype) * third
    x[::101] = 0.0
    x[7::211] = x[5]  # ties in magnitude
    x[9::307] = -x[5]
    grad = (ints[::-1].astype(dtype) * dtype(0.0009765625)).astype(dtype)
    residual = (x * dtype(0.125)).astype(dtype)
    return {"x": x, "grad": grad, "residual": residual}


def compress_cases(k) -> dict[str, Callable[[], Any]]:
    cases: dict[str, Callable[[], Any]] = {}
    for dtype in (np.float32, np.float64):
        t = np.dtype(dtype).name
        d = inputs(dtype)
        x, grad, res = d["x"], d["grad"], d["residual"]

        def ef(fn, *args, res=res, grad=grad):
            r = res.copy()
            out = fn(r, grad, *args)
            return out, r

        cases[f"{t}/inputs"] = lambda d=d: d
        bad = x.copy()
        bad[[3, 500, 9000]] = [np.nan, np.inf, -np.inf]
        cases[f"{t}/count_nonfinite"] = lambda b=bad: k.count_nonfinite(b)
        cases[f"{t}/topk"] = lambda x=x: k.topk(x, K)
        cases[f"{t}/ef_topk"] = lambda ef=ef: ef(k.ef_topk, K)
        cases[f"{t}/threshold_topk"] = lambda x=x: k.threshold_topk(x, K, SEED)
        cases[f"{t}/ef_threshold_topk"] = lambda ef=ef: ef(k.ef_threshold_topk, K, SEED)
        for unbiased in (False, True):
            cases[f"{t}/randomk/{unbiased}"] = lambda x=x, u=unbiased: k.randomk(
                x, K, SEED, u
            )
            cases[f"{t}/ef_randomk/{unbiased}"] = lambda ef=ef, u=unbiased: ef(
                k.ef_randomk, K, SEED, u
            )
        for bits in (2, 4, 8):
            for stochastic in (False, True):
                tag = f"{t}/quantize/{bits}/{stochastic}"
                cases[tag] = lambda x=x, b=bits, s=stochastic: k.quantize(
                    x, b, 256, s, SEED
                )
                cases["ef_" + tag] = lambda ef=ef, b=bits, s=stochastic: ef(
                    k.ef_quantize, b, 256, s, SEED
                )

            def deq(x=x, b=bits):
                q = k.quantize(x, b, 256, False, SEED)
                packed, amax = q[0], q[1]
                return k.dequantize(packed, amax, N, b, 256)

            cases[f"{t}/dequantize/{bits}"] = deq

            def add_deq(x=x, b=bits, dtype=dtype):
                q = k.quantize(x, b, 256, False, SEED)
                acc = np.zeros(N, dtype)
                k.add_dequantized(acc, None, q[0], q[1], b, 256, 0.3)
                return acc

            cases[f"{t}/add_dequantized/{bits}"] = add_deq
        cases[f"{t}/sign"] = lambda x=x: k.sign(x)
        cases[f"{t}/ef_sign"] = lambda ef=ef: ef(k.ef_sign)

        def unsign(x=x, dtype=dtype):
            bits_, scale = k.sign(x)
            return k.unsign(bits_, N, scale, dtype)

        cases[f"{t}/unsign"] = unsign

        def scatter(x=x, grad=grad, dtype=dtype):
            idx, vals = k.topk(x, K)[:2]
            acc = grad.copy()
            k.scatter_add(acc, idx, vals, 0.7)
            k.scatter_add(acc, None, x, 1.0 / 3.0)
            return acc

        cases[f"{t}/scatter_add"] = scatter

        def add_signs(x=x, dtype=dtype):
            bits_, scale = k.sign(x)
            acc = np.zeros(N, dtype)
            k.add_signs(acc, bits_, scale, 0.25, dtype)
            return acc

        cases[f"{t}/add_signs"] = add_signs
    cases["randomk_indices"] = lambda: k.randomk_indices(N, K, SEED)
    cases["randomk_indices/large"] = lambda: k.randomk_indices(1 << 22, 4099, SEED)

    def pack():
        n = 1 << 30
        idx = np.unique(
            np.random.Generator(np.random.PCG64(SEED)).integers(0, n, 5000)
        ).astype(np.uint32)
        widths, payload = k.pack_indices(idx)
        return widths, payload, k.unpack_indices(widths, payload, idx.size, n)

    cases["pack_indices"] = pack
    return cases


def sssp_cases(mod) -> dict[str, Callable[[], Any]]:
    rng = np.random.Generator(np.random.PCG64(SEED))
    n, deg = 300, 6
    indptr = np.arange(0, n * deg + 1, deg, dtype=np.int32)
    indices = rng.integers(0, n, n * deg).astype(np.int32)
    weight = rng.integers(1, 1000, n * deg).astype(np.float64) / 7.0
    aux = rng.integers(0, 50, n * deg).astype(np.float64) * 0.1
    return {
        "sssp": lambda: mod.sssp(indptr, indices, weight, aux, 0),
        "sssp_many": lambda: mod.sssp_many(
            indptr, indices, weight, np.arange(0, n, 37, dtype=np.int32)
        ),
    }


def run(cases: dict[str, Callable[[], Any]]) -> dict[str, str]:
    out = {}
    for name, fn in cases.items():
        try:
            out[name] = digest(fn())
        except Exception as exc:
            out[name] = f"error: {type(exc).__name__}"
    return out


def main() -> int:
    from importlib import import_module

    import agent.kernels as kernels
    import agent.kernels as pkg
    from agent.kernels import _sssp_twin

    stems = sorted(p.name.split(".")[0] for p in Path(pkg.__file__).parent.glob("*.so"))
    importable = []
    for stem in stems:
        try:
            import_module(f"agent.kernels.{stem}")
            importable.append(stem)
        except ImportError:
            pass
    result: dict[str, Any] = {
        "machine": platform.machine(),
        "numpy": np.__version__,
        "compiled_modules": importable,
        "backends": {},
    }
    for name, mod in kernels.backends().items():
        result["backends"][f"compress/{name}"] = run(compress_cases(mod))
    result["backends"]["sssp/numpy"] = run(sssp_cases(_sssp_twin))
    try:
        compiled = import_module("agent.kernels._sssp")
    except ImportError:
        pass
    else:
        result["backends"]["sssp/compiled"] = run(sssp_cases(compiled))
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
