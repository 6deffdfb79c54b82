"""Data for the demo: load a data set, keep a test split, shard the rest non-IID.

By default the data is scikit-learn's handwritten digits (1,797 8x8 images,
10 classes), which ships inside the scikit-learn package, so nothing is
downloaded.  A user's own ``.npz`` file with arrays ``X`` and ``y`` can be
used instead.  The ground keeps a stratified test split; the rest is divided
among the satellites with a Dirichlet label split and written as one ``.npz``
shard per satellite, which is all an agent ever reads.

The Dirichlet split (Hsu, Qi and Brown 2019, "Measuring the effects of
non-identical data distribution for federated visual classification") draws,
for each class, the share of that class each satellite receives from
Dir(alpha, ..., alpha): small alpha gives each satellite a few dominant
classes, large alpha approaches an IID split.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent._mlp import ShardError, load_shard

DIGITS_PIXEL_MAX = 16.0  # the digits images hold integer grey levels 0..16


@dataclass
class DataSplit:
    """What the launcher needs: the shards, the ground test split, the counts."""

    name: str
    shard_paths: list[Path]
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_dim: int
    # samples per (satellite, class)
    class_counts: np.ndarray
    feature_note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def shard_sizes(self) -> list[int]:
        return [int(n) for n in self.class_counts.sum(axis=1)]


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits, pixels scaled to [0, 1], labels int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.data / DIGITS_PIXEL_MAX).astype(np.float32)
    return X, digits.target.astype(np.int64)


def load_user_data(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a user's ``.npz`` (``X`` samples x features, ``y`` int labels).

    Raises ``ShardError`` naming the file and every problem found.
    """
    X, y, _ = load_shard(path)
    if len(y) < 20:
        raise ShardError(
            f"data file {path} has {len(y)} samples; the demo needs at least 20 "
            "to keep a test split and give every satellite a shard"
        )
    return X, y


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (train, test) with each class split in the same proportion."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction))
        # A class with at least two samples gives one to each side.
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def dirichlet_split(
    y: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_samples: int = 10,
    max_attempts: int = 1000,
) -> list[np.ndarray]:
    """Split sample indices among ``num_clients`` with a per-class Dirichlet draw.

    Draws are repeated until every client has at least ``min_samples``
    samples (the usual practice, so that no satellite has nothing to train
    on); after ``max_attempts`` draws a ValueError says the data are too few
    for that many clients.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients} must be at least 1")
    if not alpha > 0:
        raise ValueError(f"alpha={alpha} must be positive")
    n = len(y)
    if n < num_clients * min_samples:
        raise ValueError(
            f"{n} training samples cannot give {num_clients} satellites "
            f"{min_samples} samples each; use fewer satellites or more data"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(r) for r in result) >= min_samples:
            return result
    raise ValueError(
        f"no Dirichlet(alpha={alpha}) split of {n} samples over {num_clients} "
        f"satellites gave each at least {min_samples} samples in {max_attempts} "
        "draws; raise alpha or use fewer satellites"
    )


def prepare_data(
    out_dir: str | Path,
    num_satellites: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.25,
    data_path: str | Path | None = None,
    satellite_ids: list[str] | None = None,
) -> DataSplit:
    """Load the data, keep a test split and write one shard per satellite.

    Shards go to ``out_dir/sat-XXX.npz`` (or ``out_dir/<id>.npz`` when
    ``satellite_ids`` is given) with arrays ``X``, ``y`` and ``num_classes``.
    User data is standardised with the mean and standard deviation of the
    training part, computed on the ground before the shards are written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if satellite_ids is None:
        satellite_ids = [f"sat-{i:03d}" for i in range(num_satellites)]
    if len(satellite_ids) != num_satellites:
        raise ValueError(
            f"{len(satellite_ids)} satellite ids for {num_satellites} satellites"
        )

    if data_path is None:
        name = "scikit-learn digits"
        X, y = load_digits_data()
        note = f"pixels / {DIGITS_PIXEL_MAX:g}"
    else:
        name = str(data_path)
        X, y = load_user_data(data_path)
        note = "standardised with the training split's mean and std"
    num_classes = int(y.max()) + 1

    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    X_train, y_train = X[train_idx], y[train_idx]
    X_test, y_test = X[test_idx], y[test_idx]
    if data_path is not None:
        mean = X_train.mean(axis=0)
        std = X_train.std(axis=0)
        std[std == 0] = 1.0  # a constant feature stays 0 instead of dividing by 0
        X_train = ((X_train - mean) / std).astype(np.float32)
        X_test = ((X_test - mean) / std).astype(np.float32)

    min_samples = max(1, min(10, len(y_train) // (2 * num_satellites)))
    parts = dirichlet_split(y_train, num_satellites, alpha, seed, min_samples)
    paths = []
    counts = np.zeros((num_satellites, num_classes), dtype=np.int64)
    for i, (sat_id, idx) in enumerate(zip(satellite_ids, parts, strict=True)):
        path = out_dir / f"{sat_id}.npz"
        np.savez(path, X=X_train[idx], y=y_train[idx], num_classes=num_classes)
        paths.append(path)
        counts[i] = np.bincount(y_train[idx], minlength=num_classes)
    return DataSplit(
        name=name,
        shard_paths=paths,
        X_test=X_test,
        y_test=y_test,
        num_classes=num_classes,
        input_dim=int(X.shape[1]),
        class_counts=counts,
        feature_note=note,
    )
