"""Per-round safeguards of training rounds: update bounds, disk spools, privacy budget.

:class:`RoundSafeguards` is built once from the aggregator config and called by the
round coordinator at two points of every training round:

* :meth:`RoundSafeguards.wrap` when the round opens: the strategy's reducer gets a
  disk-backed spool (:mod:`aggregator.spool`) if it buffers updates, and is wrapped
  in a :class:`~fedge.strategies.reducers.BoundedReducer` when ``[robust]`` sets a
  bound or ``training.dp`` is on (DP: every update weighs 1 and is clipped at
  :func:`~fedge.privacy.server_clip_bound`);
* :meth:`RoundSafeguards.close_round` when it closes, whatever the outcome: the
  spools are released, and for a published round the privacy accountant composes
  the round; the returned :class:`RoundSafety` fills the summary's new fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from aggregator.spool import file_spool
from fedge.config import AggregatorConfig
from fedge.messages import RoundTask
from fedge.privacy import server_clip_bound
from fedge.privacy.accountant import PrivacyAccountant, round_noise_multiplier
from fedge.strategies import Reducer
from fedge.strategies.reducers import BoundedReducer, SpooledReducer, UpdateBounds

__all__ = ["RoundSafeguards", "RoundSafety"]


@dataclass(frozen=True, slots=True)
class RoundSafety:
    """What the safeguards report for one closed round (None: not configured)."""

    clipped: int | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    """Updates refused at the close (median-derived bounds), by reason."""
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_epsilon_local: float | None = None

    @property
    def late_rejected(self) -> int:
        """How many counted participants were refused at the close."""
        return sum(self.rejected.values())


class RoundSafeguards:
    """Bounds, spools and privacy accounting for one fleet's training rounds.

    ``n_params``: trainable coordinates of the model (for the DP server clip);
    ``completed_rounds``: training rounds already published before a restart. The
    checkpoint does not record each round's participants, so those rounds are
    charged at the configured noise and ``q = 1`` (exact when every expected device
    took part; an under-count when fewer did).
    """

    def __init__(self, config: AggregatorConfig, *, n_params: int, completed_rounds: int = 0):
        robust, dp = config.robust, config.training.dp
        max_norm = robust.max_update_norm
        if dp is not None:
            bound = server_clip_bound(dp, n_params)
            max_norm = bound if max_norm is None else min(max_norm, bound)
        self.bounds = UpdateBounds(
            max_weight=robust.max_examples,
            weight_median_multiple=robust.examples_median_multiple,
            max_norm=max_norm,
            norm_median_multiple=robust.norm_median_multiple,
            norm_action=robust.norm_action,
            uniform_weights=dp is not None,
        )
        self.spool = file_spool(robust.spool_dir)
        self.dp = dp
        self.population = config.privacy.population
        # The central analysis is of the (unweighted) sum; any other reducer is only
        # post-processing of the individually noised updates: the local guarantee.
        self.central = config.reducer == "mean"
        self.accountant: PrivacyAccountant | None = None
        self.local_accountant: PrivacyAccountant | None = None
        if dp is not None:
            self.accountant = PrivacyAccountant(config.privacy.delta)
            self.local_accountant = PrivacyAccountant(config.privacy.delta)
            z = dp.noise_multiplier
            if completed_rounds > 0 and z > 0:
                self.accountant.record(z, count=completed_rounds)
                self.local_accountant.record(
                    z / math.sqrt(dp.expected_clients), count=completed_rounds
                )

    def wrap(
        self, reducer: Reducer | None, task: RoundTask, template: dict[str, np.ndarray]
    ) -> Reducer | None:
        """The reducer a ``task`` round should fold its updates into."""
        if reducer is None or task != "train":
            return reducer
        if isinstance(reducer, SpooledReducer):
            reducer.use_spool(self.spool)
        if not self.bounds.active:
            return reducer
        return BoundedReducer(reducer, template, self.bounds, spool=self.spool)

    def close_round(
        self, reducer: Reducer | None, *, task: RoundTask, published: bool
    ) -> RoundSafety:
        """Release the round's buffers and account for it; call once per closed round."""
        close = getattr(reducer, "close", None)
        if callable(close):
            close()
        if task != "train":
            return RoundSafety()
        clipped: int | None = None
        rejected: dict[str, int] = {}
        accepted = reducer.count if reducer is not None else 0
        if isinstance(reducer, BoundedReducer):
            clipped = reducer.report.clipped
            rejected = dict(reducer.report.rejected)
            accepted = reducer.accepted
        dp, central, local = self.dp, self.accountant, self.local_accountant
        if dp is None or central is None or local is None:
            return RoundSafety(clipped=clipped, rejected=rejected)
        if published and accepted > 0 and dp.noise_multiplier > 0:
            q = 1.0 if self.population is None else min(1.0, accepted / self.population)
            central.record(round_noise_multiplier(dp, accepted), q)
            local.record(dp.noise_multiplier / math.sqrt(dp.expected_clients))
        eps_local = local.epsilon if dp.noise_multiplier > 0 else math.inf
        eps = central.epsilon if dp.noise_multiplier > 0 else math.inf
        return RoundSafety(
            clipped=clipped,
            rejected=rejected,
            dp_epsilon=(eps if self.central else eps_local) if math.isfinite(eps) else None,
            dp_delta=central.delta,
            dp_epsilon_local=eps_local if math.isfinite(eps_local) else None,
        )
