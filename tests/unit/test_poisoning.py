"""A device that poisons from its own topic (10**8 examples, weights x1000) is bounded.

Driven through the real :class:`RoundCoordinator` with literal frames. Without
bounds the poisoned update owns the aggregate; with ``[robust]`` bounds the model
moves by at most the norm bound, checked against the aggregate computed by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from aggregator.coordinator import RoundCoordinator
from fedge.messages import DpConfig, RoundSummary, TrainingConfig
from fedge.privacy.accountant import PrivacyAccountant
from tests.unit.test_coordinator import (
    INITIAL_TENSORS,
    TRAINABLE,
    _clean_env,  # noqa: F401 - autouse fixture
    frame,
    make,
    online,
    reply,
    shifted,
    summary,
)

HONEST = {"pump-01": 0.01, "pump-02": -0.02, "pump-03": 0.03}
"""Honest devices' deltas (every trainable coordinate moved by this much), 100 examples each."""
ATTACKER = "pump-04"


def poisoned() -> dict[str, np.ndarray]:
    return {k: (INITIAL_TENSORS[k] * np.float32(1000.0)).astype(np.float32) for k in TRAINABLE}


def delta_norm(tensors: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(
        np.sum((tensors[k].astype(np.float64) - INITIAL_TENSORS[k]) ** 2) for k in TRAINABLE
    )))


def run_round(coord: RoundCoordinator) -> RoundSummary:
    """The attacker replies first; the round closes once the honest devices replied."""
    online(coord, *HONEST, ATTACKER)
    assert coord.open is not None
    effects = reply(coord, ATTACKER, frame(ATTACKER, 1, poisoned(), num_examples=10**8))
    for device, d in HONEST.items():
        effects += reply(coord, device, frame(device, 1, shifted(d), num_examples=100))
    return summary(effects)


def test_unbounded_the_attacker_owns_the_model() -> None:
    coord = make(min_clients=4)
    s = run_round(coord)
    assert s.participants == 4 and s.clipped is None
    got = {k: coord.tensors[k] for k in TRAINABLE}
    # weight 1e8 / (1e8 + 300): the global model is (almost) the poisoned one
    assert delta_norm(got) > 0.99 * delta_norm(poisoned())


def test_clipped_attacker_moves_the_model_at_most_the_bound() -> None:
    bound, cap = 1.0, 200  # honest norms |d| sqrt(202) <= 0.43 stay inside
    coord = make(min_clients=4, robust={"max_update_norm": bound, "max_examples": cap})
    s = run_round(coord)
    assert (s.participants, s.clipped, s.rejected) == (4, 1, 0)
    # By hand: honest deltas d*1 (norm |d| sqrt(P)), weight 100 each; the attacker's delta
    # 999*w0 scaled to norm 0.05, weight capped at 200.
    p = sum(INITIAL_TENSORS[k].size for k in TRAINABLE)
    attack = {k: INITIAL_TENSORS[k].astype(np.float64) * 999.0 for k in TRAINABLE}
    attack_norm = np.sqrt(sum(np.sum(v**2) for v in attack.values()))
    for k in TRAINABLE:
        honest = sum(100 * d for d in HONEST.values()) * np.ones_like(attack[k])
        expected = (honest + 200 * attack[k] * bound / attack_norm) / (300 + 200)
        np.testing.assert_allclose(coord.tensors[k] - INITIAL_TENSORS[k], expected,
                                   rtol=1e-3, atol=2e-6)
    moved = delta_norm({k: coord.tensors[k] for k in TRAINABLE})
    assert moved <= bound
    assert max(abs(d) for d in HONEST.values()) * np.sqrt(p) < bound  # only the attacker clipped


def test_rejected_attacker_leaves_the_honest_mean() -> None:
    # the round expects the three honest devices; the attacker's extra reply is refused
    coord = make(min_clients=3, robust={"max_update_norm": 1.0, "norm_action": "reject"})
    s = run_round(coord)
    assert s.participants == 3
    assert s.rejected_by_reason == {"norm_too_large": 1}
    for k in TRAINABLE:
        np.testing.assert_allclose(coord.tensors[k], INITIAL_TENSORS[k] + (0.01 - 0.02 + 0.03) / 3,
                                   rtol=1e-5, atol=1e-6)


def test_median_derived_bounds_need_no_fixed_number() -> None:
    coord = make(min_clients=4, robust={"norm_median_multiple": 2.0,
                                        "examples_median_multiple": 2.0})
    s = run_round(coord)
    norms = sorted([abs(d) * np.sqrt(sum(INITIAL_TENSORS[k].size for k in TRAINABLE))
                    for d in HONEST.values()] + [delta_norm(poisoned())])
    bound = 2.0 * (norms[1] + norms[2]) / 2
    assert s.clipped == 1
    assert delta_norm({k: coord.tensors[k] for k in TRAINABLE}) <= bound


def test_median_reject_at_the_close_is_counted_in_the_summary() -> None:
    coord = make(min_clients=4, robust={"norm_median_multiple": 2.0, "norm_action": "reject"})
    s = run_round(coord)
    assert s.participants == 3 and s.rejected == 1
    assert s.rejected_by_reason == {"norm_too_large": 1}
    assert coord.rejected_total["norm_too_large"] == 1


def test_robust_reducer_needs_no_bound() -> None:
    coord = make(min_clients=4, reducer="median")
    run_round(coord)
    for k in TRAINABLE:  # median of (0.01, -0.02, 0.03, 999 w0): inside the honest range
        moved = coord.tensors[k].astype(np.float64) - INITIAL_TENSORS[k]
        assert np.all(moved >= -0.02 - 1e-6) and np.all(moved <= 0.03 + 1e-6)
        assert np.all(np.isin(np.round(moved, 5), [-0.005, 0.02]))  # (-0.02+0.01)/2, (0.01+0.03)/2


def _spool_fds(directory: Path) -> list[str]:
    """Open descriptors of this process that point into ``directory``."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


@pytest.mark.parametrize("reducer", ["median", "multi_krum"])
def test_round_spool_files_never_outlive_the_round(tmp_path: Path, reducer: str) -> None:
    coord = make(min_clients=4, reducer=reducer, reducer_options={"f": 0} if "krum" in reducer
                 else {}, robust={"spool_dir": tmp_path, "norm_median_multiple": 3.0})
    online(coord, *HONEST, ATTACKER)
    for device, d in HONEST.items():
        reply(coord, device, frame(device, 1, shifted(d), num_examples=100))
    assert coord.open is not None
    # mid-round: the rows are on disk in spool_dir, in unnamed files
    # the bounds' spool; the reducer's own is filled in the second pass, at the close
    assert len(_spool_fds(tmp_path)) == 1
    assert os.listdir(tmp_path) == []
    effects = reply(coord, ATTACKER, frame(ATTACKER, 1, poisoned(), num_examples=10**8))
    assert summary(effects).outcome == "completed"
    assert _spool_fds(tmp_path) == [] and os.listdir(tmp_path) == []


def test_failed_round_releases_its_spool(tmp_path: Path) -> None:
    coord = make(min_clients=2, reducer="krum", robust={"spool_dir": tmp_path})
    online(coord, "pump-01", "pump-02")
    reply(coord, "pump-01", frame("pump-01", 1, shifted(0.1)))
    assert len(_spool_fds(tmp_path)) == 1
    effects = reply(coord, "pump-02", frame("pump-02", 1, shifted(0.2)))
    assert summary(effects).outcome == "failed"  # krum f=1 needs more than 4 updates
    assert _spool_fds(tmp_path) == [] and os.listdir(tmp_path) == []


def test_dp_rounds_report_a_growing_epsilon_and_weigh_updates_equally() -> None:
    dp = DpConfig(clip_norm=0.5, noise_multiplier=1.2, expected_clients=4)
    coord = make(min_clients=4, rounds=3, training=TrainingConfig(dp=dp))
    online(coord, *HONEST, ATTACKER)
    assert coord.open is not None and coord.open.announcement.training.dp == dp
    s = run_round(coord)
    accountant = PrivacyAccountant(1e-5)
    accountant.record(1.2)  # 4 participants of 4 expected: z_eff = z
    assert s.dp_delta == 1e-5
    assert s.dp_epsilon == pytest.approx(accountant.epsilon)
    local = PrivacyAccountant(1e-5)
    local.record(1.2 / 2)
    assert s.dp_epsilon_local == pytest.approx(local.epsilon)
    # equal weights and the server clip C + s (sqrt(P) + 6) with s = 1.2 * 0.5 / 2
    p = sum(INITIAL_TENSORS[k].size for k in TRAINABLE)
    bound = 0.5 + 0.3 * (np.sqrt(p) + 6)
    assert s.clipped == 1
    attack = {k: INITIAL_TENSORS[k].astype(np.float64) * 999.0 for k in TRAINABLE}
    attack_norm = np.sqrt(sum(np.sum(v**2) for v in attack.values()))
    for k in TRAINABLE:  # every update weighs 1, whatever it claimed
        expected = (sum(HONEST.values()) + attack[k] * bound / attack_norm) / 4
        np.testing.assert_allclose(coord.tensors[k] - INITIAL_TENSORS[k], expected,
                                   rtol=1e-3, atol=2e-6)
    for device, d in HONEST.items():
        reply(coord, device, frame(device, 2, shifted(d), base_version=1, num_examples=100))
    s2 = summary(reply(coord, ATTACKER, frame(ATTACKER, 2, shifted(0.0), base_version=1)))
    accountant.record(1.2)
    assert s2.dp_epsilon == pytest.approx(accountant.epsilon)
    assert s2.dp_epsilon is not None and s.dp_epsilon is not None
    assert s2.dp_epsilon > s.dp_epsilon
