"""Client-level DP: the device-side mechanism by hand, the accountant against dp-accounting."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from fedge.messages import DpConfig, TrainingConfig
from fedge.privacy import clip_update, device_noise_std, privatize_update, server_clip_bound
from fedge.privacy.accountant import (
    ORDERS,
    PrivacyAccountant,
    noise_multiplier_for_epsilon,
    round_noise_multiplier,
)

BASE = {"a": np.array([1.0, 1.0], np.float32), "b": np.array([[0.0]], np.float32)}


def test_clip_scales_the_delta_of_all_tensors_together() -> None:
    update = {"a": np.array([4.0, 1.0], np.float32), "b": np.array([[4.0]], np.float32)}
    clipped, norm = clip_update(update, BASE, 1.0)  # delta (3, 0, 4): norm 5
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["a"], [1.6, 1.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [[0.8]], rtol=1e-6)
    same, _ = clip_update(update, BASE, 10.0)  # inside the bound: unchanged
    np.testing.assert_array_equal(same["a"], update["a"])


def test_clip_refuses_mismatched_or_non_finite_updates() -> None:
    with pytest.raises(ValueError, match="different tensors"):
        clip_update({"a": BASE["a"]}, BASE, 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip_update({"a": np.array([np.inf, 0], np.float32), "b": BASE["b"]}, BASE, 1.0)
    with pytest.raises(ValueError, match="clip_norm"):
        clip_update(BASE, BASE, 0.0)


def test_device_noise_is_the_devices_share_of_the_target() -> None:
    dp = DpConfig(clip_norm=2.0, noise_multiplier=1.5, expected_clients=9)
    assert device_noise_std(dp) == pytest.approx(1.5 * 2.0 / 3.0)  # 1.0
    base = {"w": np.zeros(200_000, np.float32)}
    noised = privatize_update(base, base, dp, rng=np.random.default_rng(0))
    # a zero delta stays zero after clipping; what is left is the noise, std 1.0
    assert float(np.std(noised["w"])) == pytest.approx(1.0, rel=0.01)
    assert abs(float(np.mean(noised["w"]))) < 0.01
    # the sum of 9 devices' noise carries the central std z * C = 3.0
    total = sum(privatize_update(base, base, dp, rng=np.random.default_rng(s))["w"]
                .astype(np.float64) for s in range(9))
    assert float(np.std(total)) == pytest.approx(3.0, rel=0.01)


def test_zero_noise_is_clipping_only() -> None:
    dp = DpConfig(clip_norm=1.0, noise_multiplier=0.0)
    update = {"a": np.array([4.0, 1.0], np.float32), "b": np.array([[4.0]], np.float32)}
    out = privatize_update(update, BASE, dp, rng=np.random.default_rng(0))
    np.testing.assert_allclose(out["a"], [1.6, 1.0], rtol=1e-6)


def test_server_clip_bound_by_hand() -> None:
    dp = DpConfig(clip_norm=1.0, noise_multiplier=1.0, expected_clients=4)
    # C + s (sqrt(P) + 6) with s = 1 * 1 / 2 and P = 100: 1 + 0.5 * 16
    assert server_clip_bound(dp, 100) == pytest.approx(9.0)


def test_honest_noised_updates_stay_under_the_server_bound() -> None:
    dp = DpConfig(clip_norm=1.0, noise_multiplier=2.0, expected_clients=4)
    base = {"w": np.zeros(10_000, np.float32)}
    update = {"w": np.full(10_000, 1.0, np.float32)}  # clipped to norm 1
    bound = server_clip_bound(dp, 10_000)
    for seed in range(20):
        out = privatize_update(update, base, dp, rng=np.random.default_rng(seed))
        assert float(np.linalg.norm(out["w"].astype(np.float64))) < bound


def test_dp_settings_travel_in_the_training_config() -> None:
    dp = DpConfig(clip_norm=0.5, noise_multiplier=1.1, expected_clients=10)
    config = TrainingConfig(dp=dp)
    assert TrainingConfig.model_validate_json(config.model_dump_json()) == config
    assert "dp" not in TrainingConfig().model_dump(exclude_none=True)  # v1 bytes unchanged


# Accountant -----------------------------------------------------------------------------


def test_accountant_matches_dp_accounting_for_one_configuration() -> None:
    z, q, rounds, delta = 1.1, 0.1, 8, 1e-5
    ours = PrivacyAccountant(delta)
    for _ in range(rounds):
        ours.record(z, q)
    reference = rdp.RdpAccountant(list(ORDERS))
    reference.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds))
    assert ours.epsilon == pytest.approx(reference.get_epsilon(delta), rel=1e-9)


def test_epsilon_grows_with_rounds() -> None:
    accountant = PrivacyAccountant(1e-5)
    assert accountant.epsilon == 0.0
    seen = []
    for _ in range(5):
        accountant.record(1.0)
        seen.append(accountant.epsilon)
    assert all(b > a for a, b in itertools.pairwise(seen))
    batched = PrivacyAccountant(1e-5)
    batched.record(1.0, count=5)
    assert batched.epsilon == pytest.approx(seen[-1], rel=1e-9)


def test_full_participation_epsilon_is_the_composed_gaussian() -> None:
    # q = 1: R Gaussian rounds of multiplier z equal one of multiplier z / sqrt(R)
    many, one = PrivacyAccountant(1e-5), PrivacyAccountant(1e-5)
    many.record(4.0, count=16)
    one.record(1.0)
    assert many.epsilon == pytest.approx(one.epsilon, rel=1e-6)


def test_fewer_participants_than_expected_carry_less_noise() -> None:
    dp = DpConfig(clip_norm=1.0, noise_multiplier=2.0, expected_clients=16)
    assert round_noise_multiplier(dp, 16) == pytest.approx(2.0)
    assert round_noise_multiplier(dp, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        round_noise_multiplier(dp, 0)


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_calibrated_noise_hits_the_target_epsilon(epsilon: float) -> None:
    z = noise_multiplier_for_epsilon(epsilon, 1e-5, rounds=20)
    accountant = PrivacyAccountant(1e-5)
    accountant.record(z, count=20)
    assert accountant.epsilon == pytest.approx(epsilon, rel=1e-3)
    assert math.isfinite(z) and z > 0
