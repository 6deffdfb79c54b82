"""The NumPy MLP trainer: gradients, learning, the Trainer contract, shards."""

import numpy as np
import pytest

from agent._mlp import (
    MLPTrainer,
    ShardError,
    _softmax_xent_grad,
    evaluate,
    init_weights,
    load_shard,
)
from agent._trainer import TrainResult

GRAD_RTOL = 1e-4  # relative error allowed between analytic and numeric gradient


def _blobs(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters, one per class, well separated."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, (classes, dim))
    y = rng.integers(0, classes, n)
    X = centres[y] + rng.normal(0.0, 1.0, (n, dim))
    return X.astype(np.float32), y


@pytest.fixture
def shard(tmp_path):
    X, y = _blobs(300, 4, 6, seed=1)
    path = tmp_path / "sat.npz"
    np.savez(path, X=X, y=y, num_classes=4)
    return path


def test_gradient_matches_central_differences():
    X, y = _blobs(20, 3, 5, seed=2)
    w64 = {
        k: v.astype(np.float64) for k, v in init_weights(5, (7, 4), 3, seed=3).items()
    }
    # Keep ReLU inputs away from the kink at 0: a sample whose previous layer
    # is all zero would otherwise feed exactly b = 0 into the next ReLU.
    w64["b0"] += 0.1
    w64["b1"] += 0.1
    _, grads = _softmax_xent_grad(w64, X.astype(np.float64), y, weight_decay=0.01)
    eps = 1e-6
    for name, w in w64.items():
        flat = w.reshape(-1)
        for j in range(0, flat.size, max(1, flat.size // 7)):
            old = flat[j]
            flat[j] = old + eps
            up, _ = _softmax_xent_grad(w64, X.astype(np.float64), y, 0.01)
            flat[j] = old - eps
            down, _ = _softmax_xent_grad(w64, X.astype(np.float64), y, 0.01)
            flat[j] = old
            # The loss returned excludes the decay term; add its derivative.
            numeric = (up - down) / (2 * eps)
            if name.startswith("W"):
                numeric += 0.01 * old
            analytic = grads[name].reshape(-1)[j]
            assert analytic == pytest.approx(numeric, rel=GRAD_RTOL, abs=1e-7), (
                name,
                j,
            )


def test_train_returns_float32_delta_equal_to_new_minus_old(shard):
    trainer = MLPTrainer(shard, hidden=(16,), local_steps=5, lr=0.1, seed=0)
    weights = trainer.initial_weights()
    frozen = {k: v.copy() for k, v in weights.items()}
    result = trainer.train(weights, round_index=0)
    assert isinstance(result, TrainResult)
    assert result.num_samples == 300
    assert set(result.delta) == {"W0", "b0", "W1", "b1"}
    for k, d in result.delta.items():
        assert d.dtype == np.float32
        assert d.shape == weights[k].shape
        np.testing.assert_array_equal(weights[k], frozen[k])  # input untouched
    assert any(np.abs(d).max() > 0 for d in result.delta.values())
    assert {"loss", "train_accuracy"} <= set(result.metrics)


def test_same_round_reproduces_the_same_update(shard):
    trainer = MLPTrainer(shard, hidden=(8,), local_steps=4, seed=5)
    w = trainer.initial_weights()
    a = trainer.train(w, 3).delta
    b = trainer.train(w, 3).delta
    c = trainer.train(w, 4).delta
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_rounds_of_training_raise_accuracy_on_held_out_data(shard, tmp_path):
    X_test, y_test = _blobs(200, 4, 6, seed=1)  # same centres: same seed
    trainer = MLPTrainer(shard, hidden=(16,), local_steps=20, lr=0.1, seed=0)
    w = trainer.initial_weights()
    before = evaluate(w, X_test, y_test)
    for r in range(10):
        delta = trainer.train(w, r).delta
        w = {k: w[k] + delta[k] for k in w}
    after = evaluate(w, X_test, y_test)
    assert after > 0.9
    assert after > before + 0.2


def test_initial_weights_are_shared_across_satellites(tmp_path):
    # Two non-IID shards, one lacking classes: same model shape and values.
    X, y = _blobs(100, 5, 4, seed=0)
    np.savez(tmp_path / "a.npz", X=X[y < 2], y=y[y < 2], num_classes=5)
    np.savez(tmp_path / "b.npz", X=X[y >= 2], y=y[y >= 2], num_classes=5)
    wa = MLPTrainer(tmp_path / "a.npz", seed=9).initial_weights()
    wb = MLPTrainer(tmp_path / "b.npz", seed=9).initial_weights()
    assert wa["W1"].shape == (64, 5)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_from_config_reads_the_trainer_table(shard):
    trainer = MLPTrainer.from_config(
        {
            "kind": "mlp",
            "data": str(shard),
            "hidden": [32, 16],
            "local_steps": 7,
            "lr": 0.02,
            "batch_size": 10,
            "seed": 4,
        }
    )
    assert trainer.hidden == (32, 16)
    assert (trainer.local_steps, trainer.lr, trainer.batch_size) == (7, 0.02, 10)
    assert set(trainer.initial_weights()) == {"W0", "b0", "W1", "b1", "W2", "b2"}


@pytest.mark.parametrize(
    "section, match",
    [
        ({"data": "x.npz", "hiddn": [3]}, "unknown \\[trainer\\] key"),
        ({"kind": "cnn", "data": "x.npz"}, "kind='cnn'"),
        ({"lr": 0.1}, "needs data"),
    ],
)
def test_from_config_rejects_bad_tables(section, match):
    with pytest.raises(ValueError, match=match):
        MLPTrainer.from_config(section)


def test_bad_settings_are_all_named_at_once(shard):
    with pytest.raises(ValueError) as info:
        MLPTrainer(shard, local_steps=0, lr=-1.0, batch_size=0)
    text = str(info.value)
    assert "local_steps=0" in text and "lr=-1.0" in text and "batch_size=0" in text


def test_wrong_weight_shapes_are_rejected_with_names(shard):
    trainer = MLPTrainer(shard, hidden=(8,))
    w = trainer.initial_weights()
    w["W1"] = np.zeros((8, 3), np.float32)
    del w["b0"]
    with pytest.raises(ValueError, match=r"W1 has shape \(8, 3\).*|b0 is missing"):
        trainer.train(w, 0)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"X": np.zeros((3, 2))}, "missing array\\(s\\) y"),
        ({"X": np.zeros(3), "y": np.zeros(3, int)}, "X has shape \\(3,\\)"),
        ({"X": np.zeros((3, 2)), "y": np.zeros(4, int)}, "3 rows but y has 4"),
        ({"X": np.zeros((2, 2)), "y": np.array([0.5, 1.0])}, "integer class"),
        ({"X": np.full((2, 2), np.nan), "y": np.zeros(2, int)}, "NaN"),
        (
            {"X": np.zeros((2, 2)), "y": np.array([0, 7]), "num_classes": 3},
            "label 7 but num_classes=3",
        ),
    ],
)
def test_bad_shards_raise_shard_error(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ShardError, match=match):
        load_shard(path)


def test_unreadable_shard_names_the_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ShardError, match="junk.npz"):
        MLPTrainer(path)
    with pytest.raises(ShardError, match="does not exist"):
        MLPTrainer(tmp_path / "missing.npz")


def test_evaluate_refuses_empty_sets():
    w = init_weights(2, (3,), 2, seed=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(w, np.zeros((0, 2), np.float32), np.zeros(0, int))
