"""The streaming form of aggregation: a model that updates flow into.

``AggregationSession`` is what ``GradientAggregator.start`` returns and what
the ground daemon feeds; ``_Round`` holds the updates between two model steps
and is shared with the one-call ``GradientAggregator.aggregate``.
"""

import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ground import _strategies as S
from ground._aggregate_updates import (
    Template,
    UpdateRejected,
    check_update,
    compressed_names,
    is_compressed,
    template_of,
)
from ground._strategies import AggregationStrategy

if TYPE_CHECKING:
    from ground._aggregate import GradientAggregator


class NotEnoughUpdates(ValueError):
    """A round holds fewer updates than its strategy needs to produce a step.

    KRUM and MULTI_KRUM need more than 2f + 2 updates.  ``received`` and
    ``required`` give the counts; the session keeps what it has, so the caller
    can wait for more or call ``discard_round``.
    """

    def __init__(self, message: str, received: int, required: int) -> None:
        super().__init__(message)
        self.received = received
        self.required = required


class _Round:
    """The updates of one round (or one FEDBUFF buffer) on their way to a step.

    Mean-type strategies keep a running weighted sum in one accumulator per
    tensor; robust strategies keep every update.  ``reduce`` returns the
    aggregated delta as flat arrays (which for the mean types are the
    accumulators themselves, divided in place: call ``clear`` before reuse).
    """

    def __init__(self, agg: "GradientAggregator", template: Template) -> None:
        self.agg = agg
        self.template = template
        self.count = 0
        self.total_weight = 0.0
        self.rows: list[dict[str, np.ndarray]] = []
        self.acc: dict[str, np.ndarray] | None = None
        self.scratch = S.scratch_for(template.acc_dtype)

    def accumulators(self) -> dict[str, np.ndarray]:
        if self.acc is None:
            self.acc = {
                name: np.zeros(spec.size, dtype=self.template.acc_dtype)
                for name, spec in self.template.tensors.items()
            }
        return self.acc

    def add(self, update: Any, weight: float, denominator: float) -> None:
        """Add ``weight * update`` to the sum and ``denominator`` to the total."""
        if self.agg.strategy.is_robust:
            self.rows.append(self.template.dense_flat(update, copy=True))
        else:
            add_scaled(self.accumulators(), update, weight, self.template, self.scratch)
        self.count += 1
        self.total_weight += denominator

    def reduce(self, *, fallback: bool = False) -> dict[str, np.ndarray]:
        strategy = self.agg.strategy
        if fallback and strategy.is_robust and self.count < self.agg.min_updates:
            return median_reduce(self.rows, self.template)
        if not strategy.is_robust:
            if not self.total_weight > 0.0:
                raise ValueError(
                    f"the total weight of the {self.count} updates is "
                    f"{self.total_weight}; at least one update needs a positive "
                    "weight before their mean exists"
                )
            acc = self.accumulators()
            # One rounding: the quotient is formed in float64.
            total = np.float64(self.total_weight)
            for flat in acc.values():
                np.divide(flat, total, out=flat, casting="same_kind")
            return acc
        return robust_reduce(self.agg, self.rows, self.template)

    def clear(self) -> None:
        self.count = 0
        self.total_weight = 0.0
        self.rows = []
        if self.acc is not None:
            for flat in self.acc.values():
                flat.fill(0)


def add_scaled(
    targets: dict[str, np.ndarray],
    update: Any,
    weight: float,
    template: Template,
    scratch: np.ndarray,
) -> None:
    """Add ``weight * update`` into the flat ``targets`` (accumulators or model).

    A compressed update goes through its own scatter-add (the compiled kernel:
    O(kept elements), never decompressed); a dense one through ``axpy``.
    """
    if is_compressed(update):
        mapping = compressed_names(update, template)
        update.add_to({name: targets[m] for name, m in mapping.items()}, weight)
        return
    for name, flat in template.dense_flat(update, copy=False).items():
        S.axpy(targets[name], weight, flat, scratch)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def not_enough(agg: "GradientAggregator", received: int) -> NotEnoughUpdates:
    f = agg.byzantine_f
    return NotEnoughUpdates(
        f"{agg.strategy.name} with byzantine_f={f} needs more than 2f + 2 = "
        f"{2 * f + 2} updates but got {received}; collect at least "
        f"{2 * f + 3} or lower byzantine_f",
        received,
        2 * f + 3,
    )


def median_reduce(
    rows: list[dict[str, np.ndarray]], template: Template
) -> dict[str, np.ndarray]:
    """Return the coordinate-wise median of ``rows`` (flat dense updates)."""
    out = {
        name: np.empty(spec.size, dtype=template.acc_dtype)
        for name, spec in template.tensors.items()
    }
    for name in out:
        S.coordinate_median([r[name] for r in rows], out[name])
    return out


def robust_reduce(
    agg: "GradientAggregator", rows: list[dict[str, np.ndarray]], template: Template
) -> dict[str, np.ndarray]:
    """Return the robust aggregate of ``rows`` (flat dense updates)."""
    n = len(rows)
    if n < agg.min_updates:
        raise not_enough(agg, n)
    if agg.strategy is AggregationStrategy.MEDIAN:
        return median_reduce(rows, template)
    out = {
        name: np.empty(spec.size, dtype=template.acc_dtype)
        for name, spec in template.tensors.items()
    }
    if agg.strategy is AggregationStrategy.TRIMMED_MEAN:
        for name in out:
            S.coordinate_trimmed_mean(
                [r[name] for r in rows], agg.trim_ratio, out[name]
            )
        return out

    dist = sum(S.pairwise_sq_distances([r[name] for r in rows]) for name in out)
    scores = S.krum_scores(dist, agg.byzantine_f)
    if agg.strategy is AggregationStrategy.KRUM:
        m = 1
    else:
        m = min(n, agg.multi_krum_m or n - agg.byzantine_f)
    chosen = S.krum_select(scores, m)
    for name, flat in out.items():
        acc = np.zeros(flat.size, dtype=np.float64)
        for i in chosen:
            acc += rows[i][name]
        flat[...] = acc / len(chosen)
    return out


# -- the streaming form -------------------------------------------------


class AggregationSession:
    """A global model that updates stream into, one ``submit`` at a time.

    Synchronous strategies collect a round and step the model in
    ``close_round``; FEDASYNC steps on every ``submit`` and FEDBUFF on every
    ``buffer_size``-th.  ``model`` holds live views of the session's arrays
    (copy them to keep a snapshot); ``version`` counts model steps;
    ``pending`` and ``total_weight`` describe what is collected but not yet
    applied.
    """

    def __init__(
        self,
        aggregator: "GradientAggregator",
        model: Mapping[str, np.ndarray],
        version: int,
        optimizer_state: Mapping[str, np.ndarray] | None,
    ) -> None:
        if not isinstance(model, Mapping):
            raise ValueError(
                f"a session needs the model as a dict of named arrays, got "
                f"{type(model).__name__}"
            )
        if not (isinstance(version, numbers.Integral) and version >= 0):
            raise ValueError(f"version={version!r} must be an int >= 0")
        self.aggregator = aggregator
        self.template = template_of(model)
        self.version = int(version)
        # The session owns its copy, flat and contiguous, in the model's dtype.
        self._model = {
            name: np.array(model[name], dtype=spec.dtype).reshape(-1)
            for name, spec in self.template.tensors.items()
        }
        self._round = _Round(aggregator, self.template)
        # The model itself can take scatter-adds when it is in the accumulator
        # dtype (float32 or float64), as the compiled kernel requires.
        self._direct = all(
            spec.dtype == self.template.acc_dtype
            for spec in self.template.tensors.values()
        )
        self._optimizer = S.ServerOptimizer(
            aggregator.server_optimizer,
            aggregator.server_lr,
            aggregator.server_momentum,
            aggregator.adam_betas,
            aggregator.adam_eps,
        )
        self._load_optimizer_state(optimizer_state or {})

    def _load_optimizer_state(self, given: Mapping[str, np.ndarray]) -> None:
        wanted = self._optimizer.state_names(list(self.template.tensors))
        missing = [n for n in wanted if n not in given]
        extra = [n for n in given if n not in wanted]
        if given and (missing or extra):
            raise ValueError(
                f"optimizer_state does not fit {self.aggregator.server_optimizer} "
                f"(momentum {self.aggregator.server_momentum}): missing {missing}, "
                f"unexpected {extra}"
            )
        for key in wanted:
            spec = self.template.tensors[key.split("/", 1)[1]]
            if key in given:
                a = np.asarray(given[key])
                if a.shape != spec.shape:
                    raise ValueError(
                        f"optimizer_state[{key!r}] has shape {a.shape}; the model "
                        f"tensor has {spec.shape}"
                    )
                flat = np.array(a, dtype=self.template.acc_dtype).reshape(-1)
            else:
                flat = np.zeros(spec.size, dtype=self.template.acc_dtype)
            self._optimizer.state[key] = flat

    @property
    def model(self) -> dict[str, np.ndarray]:
        """The current global model, as live views shaped like the original."""
        return {
            name: self._model[name].reshape(spec.shape)
            for name, spec in self.template.tensors.items()
        }

    @property
    def optimizer_state(self) -> dict[str, np.ndarray]:
        """The server optimizer's buffers (empty for plain SGD), for checkpoints."""
        return {
            key: flat.reshape(self.template.tensors[key.split("/", 1)[1]].shape)
            for key, flat in self._optimizer.state.items()
        }

    @property
    def pending(self) -> int:
        """Updates accepted but not yet applied to the model."""
        return self._round.count

    @property
    def total_weight(self) -> float:
        """The summed weight of the pending updates (the mean's denominator)."""
        return self._round.total_weight

    @property
    def max_staleness(self) -> int | None:
        return self.aggregator.max_staleness

    def submit(
        self,
        update: Any,
        *,
        num_samples: int,
        staleness: int = 0,
        weight: float | None = None,
    ) -> bool:
        """Validate ``update`` and add it; return True when the model changed.

        ``num_samples`` (> 0) is the FEDAVG weight; ``weight`` overrides it and
        is required by WEIGHTED; FEDASYNC and FEDBUFF weigh every update 1
        unless ``weight`` is given (Xie et al.; Nguyen et al.); the robust
        strategies weigh all updates alike whatever is claimed.  ``staleness``
        is how many model versions the update's base is behind.  Raises
        ``UpdateRejected`` and leaves the session unchanged for a bad update.
        """
        agg = self.aggregator
        strategy = agg.strategy
        if not (
            isinstance(num_samples, numbers.Integral)
            and not isinstance(num_samples, bool)
            and num_samples > 0
        ):
            raise UpdateRejected(
                f"num_samples={num_samples!r} must be an int > 0",
                "samples",
                num_samples,
            )
        if not (
            isinstance(staleness, numbers.Integral)
            and not isinstance(staleness, bool)
            and staleness >= 0
        ):
            raise UpdateRejected(
                f"staleness={staleness!r} must be an int >= 0", "stale", staleness
            )
        if agg.max_staleness is not None and staleness > agg.max_staleness:
            raise UpdateRejected(
                f"the update is {staleness} versions stale; {strategy.name} accepts "
                f"at most {agg.max_staleness}",
                "stale",
                staleness,
            )
        if weight is None and strategy is AggregationStrategy.WEIGHTED:
            raise UpdateRejected(
                "WEIGHTED needs an explicit weight for every update; got none",
                "weight",
                None,
            )
        if weight is not None and not (
            _is_number(weight) and math.isfinite(weight) and weight > 0
        ):
            raise UpdateRejected(
                f"weight={weight!r} must be a finite number > 0", "weight", weight
            )
        check_update(update, self.template)

        s = agg.staleness_factor(int(staleness))
        if strategy.is_robust:
            self._round.add(update, 1.0, 1.0)
            return False
        if strategy is AggregationStrategy.FEDAVG:
            w = float(num_samples if weight is None else weight) * s
            self._round.add(update, w, w)
            return False
        if strategy is AggregationStrategy.WEIGHTED:
            w = float(weight) * s
            self._round.add(update, w, w)
            return False
        w = 1.0 if weight is None else float(weight)
        if strategy is AggregationStrategy.FEDBUFF:
            # Nguyen et al. 2022, Algorithm 1: the buffer sums s(t) * delta and
            # steps by its mean over the K buffered updates.
            self._round.add(update, w * s, w)
            if self._round.count >= agg.buffer_size:
                self._apply_round()
                return True
            return False
        # FEDASYNC (Xie et al. 2019): x <- x + alpha * s(t) * delta, on arrival.
        # The paper mixes weights, x <- (1 - a) x + a x_new; in delta form that
        # is the same for a fresh update, while for a stale one it adds the
        # client's own progress instead of pulling x back toward its old base.
        coefficient = agg.mixing * s * w
        if self._optimizer.stateless and self._direct:
            # Straight into the model: O(kept elements) for a sparse update.
            add_scaled(
                self._model,
                update,
                coefficient * self._optimizer.lr,
                self.template,
                self._round.scratch,
            )
        else:
            self._round.add(update, coefficient, 1.0)
            self._apply_round()
            return True
        self.version += 1
        return True

    def close_round(self, *, median_fallback: bool = False) -> bool:
        """Apply what the round collected; return False if there was nothing.

        Synchronous strategies step the model by the server step of the
        round's aggregate.  FEDBUFF flushes a partial buffer; FEDASYNC has
        nothing pending.  With no updates the model stays as it was.  Raises
        ``NotEnoughUpdates`` (and keeps the round) when KRUM has too few,
        unless ``median_fallback``: then those few are aggregated by their
        coordinate-wise median, which is defined for any number of updates
        (see ``needs_fallback``).
        """
        if self._round.count == 0:
            return False
        self._apply_round(fallback=median_fallback)
        return True

    @property
    def needs_fallback(self) -> bool:
        """True when KRUM / MULTI_KRUM hold updates but fewer than they need.

        Such a round can only close with ``close_round(median_fallback=True)``
        (or be discarded).  The median of fewer than 2f + 3 updates tolerates
        fewer Byzantine ones than KRUM would (none with 1 or 2 updates), which
        is the price of not throwing away updates already acknowledged.
        """
        n = self._round.count
        return 0 < n < self.aggregator.min_updates

    def discard_round(self) -> int:
        """Drop the pending updates without touching the model; return how many."""
        dropped = self._round.count
        self._round.clear()
        return dropped

    def _apply_round(self, *, fallback: bool = False) -> None:
        delta = self._round.reduce(fallback=fallback)
        for name, flat in self._model.items():
            self._optimizer.apply(name, flat, delta[name], self._round.scratch)
        self._round.clear()
        self.version += 1
