"""NumPy layers against straightforward references; model specs and ranges."""

import json
import math

import numpy as np
import pytest

from agent._nn import (
    ModelSpecError,
    conv2d,
    example_cnn,
    example_mlp,
    gelu,
    layernorm,
    load_model,
    save_model,
    softmax,
)

F32_TOL = 1e-5  # relative tolerance for float32 sums of a few hundred terms


def naive_conv2d(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    out_c, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * padding, wd + 2 * padding), dtype=np.float64)
    xp[:, :, padding : padding + h, padding : padding + wd] = x
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, out_c, oh, ow))
    for i in range(n):
        for o in range(out_c):
            for r in range(oh):
                for s in range(ow):
                    acc = b[o]
                    for ch in range(c):
                        for p in range(kh):
                            for q in range(kw):
                                acc += (
                                    xp[i, ch, r * stride + p, s * stride + q]
                                    * w[o, ch, p, q]
                                )
                    y[i, o, r, s] = acc
    return y


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [((2, 3, 7, 6), (4, 3, 3, 3), 1, 1), ((1, 2, 8, 8), (3, 2, 2, 3), 2, 0),
     ((2, 1, 5, 5), (2, 1, 5, 5), 1, 2), ((1, 4, 9, 7), (5, 4, 3, 1), 3, 1)],
)  # fmt: skip
def test_conv2d_matches_the_naive_loop(shape, kernel, stride, padding):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype(np.float32)
    w = rng.normal(size=kernel).astype(np.float32)
    b = rng.normal(size=kernel[0]).astype(np.float32)
    got = conv2d(x, w, b, stride, padding)
    want = naive_conv2d(x, w, b, stride, padding)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=F32_TOL, atol=F32_TOL)


def test_gelu_matches_erf_and_the_tanh_formula():
    x = np.linspace(-8, 8, 2001).astype(np.float32)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    # A&S 7.1.26 bounds |erf error| by 1.5e-7, so |gelu error| <= 0.75e-7 |x|,
    # plus float32 rounding of the result
    err = np.abs(gelu(x).astype(np.float64) - exact)
    assert (err <= 0.75e-7 * np.abs(x) + 1.2e-7 * np.abs(exact) + 1e-30).all()
    tanh = np.array(
        [
            0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
            for v in x.tolist()
        ]
    )
    np.testing.assert_allclose(gelu(x, "tanh"), tanh, rtol=1e-5, atol=1e-6)
    # the two forms differ by at most ~1e-3 (Hendrycks & Gimpel, fig. 1)
    assert np.abs(gelu(x) - gelu(x, "tanh")).max() < 1e-3


def test_layernorm_matches_a_per_row_reference():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(4, 3, 17)) * 5 + 2).astype(np.float32)
    g = rng.normal(size=17).astype(np.float32)
    b = rng.normal(size=17).astype(np.float32)
    got = layernorm(x, g, b, 1e-5)
    want = np.empty(x.shape)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx].astype(np.float64).tolist()
        mean = sum(row) / len(row)
        var = sum((v - mean) ** 2 for v in row) / len(row)
        want[idx] = [(v - mean) / math.sqrt(var + 1e-5) for v in row]
    np.testing.assert_allclose(got, want * g + b, rtol=1e-4, atol=1e-5)


def test_softmax_rows_sum_to_one_and_survive_large_inputs():
    x = np.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]], dtype=np.float32)
    y = softmax(x)
    e = np.exp([0.0, 1.0, 2.0])
    np.testing.assert_allclose(y[0], e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("make", [example_mlp, example_cnn])
def test_any_split_of_the_chain_equals_the_whole(tmp_path, make):
    spec, weights = make()
    model = load_model(save_model(tmp_path / "m.json", spec, weights))
    x = np.random.default_rng(3).normal(size=(4, *model.input_shape)).astype(np.float32)
    whole = model.forward(x)
    for cut1 in range(1, len(model)):
        for cut2 in range(cut1 + 1, len(model) + 1):
            y = model.forward(x, 0, cut1)
            y = model.forward(y, cut1, cut2)
            if cut2 < len(model):
                y = model.forward(y, cut2)
            np.testing.assert_array_equal(y, whole)
    assert whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-5)


def test_mlp_forward_matches_a_plain_numpy_rewrite(tmp_path):
    spec, weights = example_mlp(seed=4, sizes=(8, 6, 5))
    model = load_model(save_model(tmp_path / "m.json", spec, weights))
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    x = np.random.default_rng(5).normal(size=(3, 8))
    h = np.maximum(x @ w["fc0.w"] + w["fc0.b"], 0)
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-5) * w["ln0.g"] + w["ln0.b"]
    h = h + np.maximum(h @ w["res0.fc.w"] + w["res0.fc.b"], 0)
    h = h @ w["fc1.w"] + w["fc1.b"]
    want = np.exp(h - h.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(model.forward(x.astype(np.float32)), want, rtol=1e-4)


def test_profiles_count_params_flops_and_activations(tmp_path):
    spec, weights = example_cnn()
    model = load_model(save_model(tmp_path / "c.json", spec, weights))
    rows = {r["name"]: r for r in model.layer_profiles()}
    # conv0: 8 outputs channels of 16x16, each 3*3*3 multiply-adds; 8*3*9+8 params
    assert rows["conv0"]["flops"] == 2 * 27 * 8 * 16 * 16
    assert rows["conv0"]["params_mb"] == pytest.approx((8 * 27 + 8) * 4 / 1e6)
    assert rows["conv0"]["output_bytes"] == 8 * 16 * 16 * 4
    assert rows["flat"]["params_mb"] == 0 and rows["flat"]["flops"] == 0
    assert model.input_bytes == 3 * 16 * 16 * 4


def test_spec_errors_name_the_problem(tmp_path):
    spec, weights = example_mlp()
    bad = dict(spec, layers=[{"name": "x", "op": "dense", "weights": {"w": "nope"}}])
    with pytest.raises(ModelSpecError, match="'nope' is not in the .npz"):
        save_model(tmp_path / "b.json", bad, weights)
    bad = dict(spec, layers=[{"name": "x", "op": "maxpool"}])
    with pytest.raises(ModelSpecError, match="op='maxpool'"):
        save_model(tmp_path / "b.json", bad, weights)
    weights = dict(weights, **{"fc0.w": np.zeros((3, 3))})
    with pytest.raises(ModelSpecError, match=r"weight shape \(3, 3\)"):
        save_model(tmp_path / "b.json", spec, weights)
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ModelSpecError, match="format is 'other'"):
        load_model(path, tmp_path / "missing.npz")


def test_unused_weights_are_listed(tmp_path):
    spec, weights = example_mlp()
    model = load_model(
        save_model(tmp_path / "m.json", spec, dict(weights, extra=[1.0]))
    )
    assert model.unused_weights == ["extra"]
    assert (
        load_model(save_model(tmp_path / "n.json", spec, weights)).unused_weights == []
    )


def test_forward_rejects_a_wrong_shape(tmp_path):
    spec, weights = example_cnn()
    model = load_model(save_model(tmp_path / "c.json", spec, weights))
    with pytest.raises(ValueError, match=r"takes batches of shape \(n, 3, 16, 16\)"):
        model.forward(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"layer range \[3, 2\)"):
        model.forward(np.zeros((2, 3, 16, 16), np.float32), 3, 2)
