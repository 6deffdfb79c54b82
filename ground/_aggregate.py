"""Combine model updates from many satellites into one global step.

Two forms share one implementation:

- ``GradientAggregator.aggregate(updates, weights)`` combines a list of
  updates in one call (the in-process API of the reference design);
- ``GradientAggregator.start(model)`` opens an ``AggregationSession`` that
  takes updates one at a time as they stream in (``submit``), which is what
  the ground daemon feeds from its sockets and replays from its journal.

An update is a delta (the client's new weights minus the weights it
received), as a dense ``dict`` of named arrays, a bare array, or a compressed
update from ``agent`` (anything with ``tensors``, ``add_to`` and
``decompress``).  The mean-type strategies (FEDAVG, WEIGHTED, FEDASYNC,
FEDBUFF) scatter-add each update into one accumulator as it arrives, so a
session holds the model plus one model-sized accumulator whatever the number
of participants.  The robust strategies (MEDIAN, TRIMMED_MEAN, KRUM,
MULTI_KRUM) cannot: a median or a pairwise distance needs every update of the
round at once, so they keep all of them until the round closes, which costs
one model-sized copy per participant.

Everything is deterministic: the same sequence of ``submit`` calls gives a
bit-identical model, so a daemon that replays its journal after a crash
reaches the state it had.
"""

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ground import _strategies as S
from ground._aggregate_session import (
    AggregationSession,
    _is_number,
    _Round,
    not_enough,
)
from ground._aggregate_updates import (
    Template,
    TensorSpec,
    check_update,
    declared,
    is_compressed,
    template_of,
)
from ground._strategies import KRUMS, AggregationStrategy


class GradientAggregator:
    """Aggregate model deltas with one ``AggregationStrategy``.

    Parameters, by the strategies that read them:

    - ``trim_ratio`` (TRIMMED_MEAN): fraction dropped at each end per
      coordinate, in [0, 0.5).
    - ``byzantine_f`` (KRUM, MULTI_KRUM): the number of Byzantine updates to
      tolerate; a round needs more than 2f + 2 updates.
    - ``multi_krum_m`` (MULTI_KRUM): how many best-scored updates to average;
      None means n - f.
    - ``staleness_fn``, ``staleness_a``, ``staleness_b``: the decay s(t) of an
      update t model versions old (``polynomial``, ``hinge`` or ``constant``;
      see ``ground._strategies.staleness_factor``).  It scales the weight of
      every mean-type update; the robust strategies ignore it.
    - ``max_staleness``: updates older than this are rejected with reason
      ``stale``.  None means no limit for FEDASYNC and FEDBUFF and 0 for the
      synchronous strategies, whose updates must be computed on the current
      model.
    - ``buffer_size`` (FEDBUFF): K, the updates buffered per model step.
    - ``mixing`` (FEDASYNC): alpha in (0, 1].
    - ``server_lr``, ``server_momentum``, ``server_optimizer`` (``sgd`` or
      ``adam``), ``adam_betas``, ``adam_eps``: how a session turns the
      aggregated delta into the step it applies (see ``ServerOptimizer``).
      ``aggregate`` returns the aggregated delta itself, before this step.
    """

    def __init__(
        self,
        strategy: AggregationStrategy | str,
        *,
        trim_ratio: float = 0.1,
        byzantine_f: int = 1,
        multi_krum_m: int | None = None,
        staleness_fn: str = "polynomial",
        staleness_a: float = 0.5,
        staleness_b: float = 4,
        max_staleness: int | None = None,
        buffer_size: int = 10,
        mixing: float = 0.6,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        server_optimizer: str = "sgd",
        adam_betas: tuple[float, float] = (0.9, 0.99),
        adam_eps: float = 1e-3,
    ) -> None:
        self.strategy = AggregationStrategy.parse(strategy)
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(
            _is_number(trim_ratio) and 0.0 <= trim_ratio < 0.5,
            f"trim_ratio={trim_ratio!r} must be in [0, 0.5)",
        )
        need(
            isinstance(byzantine_f, numbers.Integral) and byzantine_f >= 0,
            f"byzantine_f={byzantine_f!r} must be an int >= 0",
        )
        need(
            multi_krum_m is None
            or (isinstance(multi_krum_m, numbers.Integral) and multi_krum_m >= 1),
            f"multi_krum_m={multi_krum_m!r} must be None or an int >= 1",
        )
        need(
            staleness_fn in S.STALENESS_FUNCTIONS,
            f"staleness_fn={staleness_fn!r} must be one of "
            f"{', '.join(S.STALENESS_FUNCTIONS)}",
        )
        need(
            _is_number(staleness_a) and math.isfinite(staleness_a) and staleness_a >= 0,
            f"staleness_a={staleness_a!r} must be a finite number >= 0",
        )
        need(
            _is_number(staleness_b) and math.isfinite(staleness_b) and staleness_b >= 0,
            f"staleness_b={staleness_b!r} must be a finite number >= 0",
        )
        need(
            max_staleness is None
            or (isinstance(max_staleness, numbers.Integral) and max_staleness >= 0),
            f"max_staleness={max_staleness!r} must be None or an int >= 0",
        )
        need(
            isinstance(buffer_size, numbers.Integral) and buffer_size >= 1,
            f"buffer_size={buffer_size!r} must be an int >= 1",
        )
        need(
            _is_number(mixing) and 0.0 < mixing <= 1.0,
            f"mixing={mixing!r} must be in (0, 1]",
        )
        need(
            _is_number(server_lr) and math.isfinite(server_lr) and server_lr > 0,
            f"server_lr={server_lr!r} must be a finite number > 0",
        )
        need(
            _is_number(server_momentum) and 0.0 <= server_momentum < 1.0,
            f"server_momentum={server_momentum!r} must be in [0, 1)",
        )
        need(
            server_optimizer in ("sgd", "adam"),
            f"server_optimizer={server_optimizer!r} must be 'sgd' or 'adam'",
        )
        need(
            len(adam_betas) == 2
            and all(_is_number(b) and 0.0 <= b < 1.0 for b in adam_betas),
            f"adam_betas={adam_betas!r} must be two numbers in [0, 1)",
        )
        need(
            _is_number(adam_eps) and math.isfinite(adam_eps) and adam_eps > 0,
            f"adam_eps={adam_eps!r} must be a finite number > 0",
        )
        need(
            not (server_optimizer == "adam" and server_momentum),
            "server_momentum applies to server_optimizer='sgd'; adam has its own "
            "adam_betas",
        )
        if problems:
            raise ValueError(
                f"GradientAggregator({self.strategy.name}) options are invalid: "
                + "; ".join(problems)
            )
        self.trim_ratio = float(trim_ratio)
        self.byzantine_f = int(byzantine_f)
        self.multi_krum_m = None if multi_krum_m is None else int(multi_krum_m)
        self.staleness_fn = staleness_fn
        self.staleness_a = float(staleness_a)
        self.staleness_b = float(staleness_b)
        if max_staleness is None and not self.strategy.is_async:
            max_staleness = 0
        self.max_staleness = None if max_staleness is None else int(max_staleness)
        self.buffer_size = int(buffer_size)
        self.mixing = float(mixing)
        self.server_lr = float(server_lr)
        self.server_momentum = float(server_momentum)
        self.server_optimizer = server_optimizer
        self.adam_betas = (float(adam_betas[0]), float(adam_betas[1]))
        self.adam_eps = float(adam_eps)

    @property
    def is_async(self) -> bool:
        """True when the model changes on ``submit`` (FEDASYNC, FEDBUFF)."""
        return self.strategy.is_async

    @property
    def min_updates(self) -> int:
        """The fewest updates a round needs: 2f + 3 for the Krums, else 1."""
        if self.strategy in KRUMS:
            return 2 * self.byzantine_f + 3
        return 1

    def staleness_factor(self, staleness: int) -> float:
        """Return s(staleness), the weight multiplier of a stale update."""
        return S.staleness_factor(
            self.staleness_fn, staleness, self.staleness_a, self.staleness_b
        )

    def __repr__(self) -> str:
        return f"GradientAggregator({self.strategy.name})"

    # -- the in-process form ------------------------------------------------

    def aggregate(
        self, updates: Sequence[Any], weights: Sequence[float] | None = None
    ) -> Any:
        """Return the aggregate of ``updates``, in the form they came in.

        ``updates`` are arrays, dicts of named arrays, or compressed updates,
        all of the same tensors; ``weights`` (one per update, any positive
        scale: they are normalised) weight the mean-type strategies, and None
        weighs all alike.  FEDASYNC and FEDBUFF return the weighted mean here,
        the step FEDBUFF takes for one buffer of fresh updates; their
        staleness handling lives in sessions.  The robust strategies weigh
        every update alike, because a Byzantine client could claim any weight;
        they refuse unequal ``weights``.

        Raises ValueError, naming the values, for an empty list, lists of
        different lengths, a negative or non-finite weight, weights summing to
        0, too few updates for KRUM, and updates that do not match the first
        (``UpdateRejected``, a ValueError, with the update's index).
        """
        updates = list(updates)
        if not updates:
            raise ValueError("there are no updates to aggregate; pass at least one")
        if weights is None:
            weights = [1.0] * len(updates)
        else:
            weights = list(weights)
        if len(weights) != len(updates):
            raise ValueError(
                f"got {len(updates)} updates but {len(weights)} weights; pass one "
                "weight per update"
            )
        bad = [
            (i, w)
            for i, w in enumerate(weights)
            if not (_is_number(w) and math.isfinite(w) and w >= 0)
        ]
        if bad:
            raise ValueError(
                "weights must be finite numbers >= 0; got "
                + ", ".join(f"weights[{i}]={w!r}" for i, w in bad)
            )
        total = math.fsum(float(w) for w in weights)
        if not total > 0.0:
            raise ValueError(
                f"the {len(weights)} weights sum to {total}; at least one update "
                "needs a positive weight, there is no mean of nothing"
            )
        if self.strategy.is_robust and len(set(map(float, weights))) > 1:
            raise ValueError(
                f"{self.strategy.name} weighs every update alike (a Byzantine "
                f"client could claim any weight) but got unequal weights "
                f"{weights}; pass weights=None"
            )

        template = _batch_template(updates)
        for i, update in enumerate(updates):
            check_update(update, template, label=f"updates[{i}]")
        if len(updates) < self.min_updates:
            raise not_enough(self, len(updates))

        batch = _Round(self, template)
        for update, w in zip(updates, weights, strict=True):
            if w > 0 or self.strategy.is_robust:
                batch.add(update, float(w), float(w))
        return template.shaped(batch.reduce())

    def start(
        self,
        model: Mapping[str, np.ndarray],
        *,
        version: int = 0,
        optimizer_state: Mapping[str, np.ndarray] | None = None,
    ) -> AggregationSession:
        """Open a session that aggregates updates into a copy of ``model``.

        ``version`` and ``optimizer_state`` restore a session from a
        checkpoint (``session.version`` and ``session.optimizer_state``).
        """
        return AggregationSession(self, model, version, optimizer_state)


def _batch_template(updates: list[Any]) -> Template:
    """Return the template the first update sets for ``aggregate``.

    It accumulates in the widest float dtype among all the updates (at least
    float32), so float64 gradients are averaged in float64.
    """
    template = template_of(updates[0], what="first update")
    dtypes = []
    for u in updates:
        if is_compressed(u):
            dtypes.extend(dt for _, dt in declared(u).values())
        else:
            items = u.values() if isinstance(u, Mapping) else [u]
            dtypes.extend(np.asarray(a).dtype for a in items)
    widest = np.result_type(template.acc_dtype, *(d for d in dtypes if d.kind == "f"))
    return Template(
        {
            name: TensorSpec(spec.shape, np.result_type(spec.dtype, widest))
            for name, spec in template.tensors.items()
        },
        template.bare,
    )
