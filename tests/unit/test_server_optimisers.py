"""FedProx, FedAvgM, FedAdam and FedYogi against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.errors import ConfigError
from fedge.strategies import FedAdam, FedAvgM, FedProx, FedYogi, make_strategy

W = {"w": np.array([1.0, -2.0], np.float32)}
MEAN = {"w": np.array([0.5, -1.0], np.float32)}  # clients moved by delta = [-0.5, +1.0]


def test_fedprox_averages_and_sends_mu_to_clients() -> None:
    strategy = FedProx(mu=0.1)
    assert strategy.client_options() == {"proximal_mu": 0.1}
    np.testing.assert_array_equal(strategy.aggregate(W, MEAN)["w"], MEAN["w"])


def test_fedavgm_momentum_by_hand() -> None:
    strategy = FedAvgM(server_lr=1.0, momentum=0.5)
    # round 1: v = w - mean = [0.5, -1.0]; w' = w - v = [0.5, -1.0]
    w1 = strategy.aggregate(W, MEAN)
    np.testing.assert_allclose(w1["w"], [0.5, -1.0])
    # round 2 with the clients again at MEAN: grad = w1 - mean = 0; v = 0.5*v = [0.25, -0.5]
    w2 = strategy.aggregate(w1, MEAN)
    np.testing.assert_allclose(w2["w"], [0.25, -0.5])


def test_fedavgm_without_momentum_is_fedavg() -> None:
    strategy = FedAvgM(server_lr=1.0, momentum=0.0)
    np.testing.assert_allclose(strategy.aggregate(W, MEAN)["w"], MEAN["w"])


def test_fedadam_first_step_by_hand() -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = FedAdam(eta=eta, beta_1=b1, beta_2=b2, tau=tau)
    delta = np.array([-0.5, 1.0])
    m = (1 - b1) * delta
    v = b2 * tau**2 + (1 - b2) * delta**2
    expected = np.array([1.0, -2.0]) + eta * m / (np.sqrt(v) + tau)
    np.testing.assert_allclose(strategy.aggregate(W, MEAN)["w"], expected, rtol=1e-6)


def test_fedyogi_first_step_by_hand() -> None:
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = FedYogi(eta=eta, beta_1=b1, beta_2=b2, tau=tau)
    delta = np.array([-0.5, 1.0])
    m = (1 - b1) * delta
    v0 = np.full(2, tau**2)
    v = v0 - (1 - b2) * delta**2 * np.sign(v0 - delta**2)  # v0 < delta^2, so v grows
    expected = np.array([1.0, -2.0]) + eta * m / (np.sqrt(v) + tau)
    np.testing.assert_allclose(strategy.aggregate(W, MEAN)["w"], expected, rtol=1e-6)
    assert np.all(v > v0)


@pytest.mark.parametrize("cls", [FedAvgM, FedAdam, FedYogi])
def test_server_state_survives_a_checkpoint(cls: type) -> None:
    a, b = cls(), cls()
    a.aggregate(W, MEAN)
    b.load_state(a.state())
    np.testing.assert_allclose(a.aggregate(W, MEAN)["w"], b.aggregate(W, MEAN)["w"])


def test_adaptive_optimisers_converge_towards_a_fixed_client_mean() -> None:
    target = {"w": np.array([3.0, -1.0], np.float32)}
    for strategy in (FedAdam(eta=0.1), FedYogi(eta=0.1), FedAvgM(server_lr=0.5, momentum=0.5)):
        w = {"w": np.zeros(2, np.float32)}
        for _ in range(300):
            w = strategy.aggregate(w, target)
        np.testing.assert_allclose(w["w"], target["w"], atol=0.1, err_msg=strategy.name)


def test_make_strategy_by_name_with_options() -> None:
    strategy = make_strategy("fedadam", {"eta": 0.5})
    assert isinstance(strategy, FedAdam) and strategy.eta == 0.5
    with pytest.raises(ConfigError, match="bad options"):
        make_strategy("fedavgm", {"momentum": 2.0})
    with pytest.raises(ConfigError, match="bad options"):
        make_strategy("fedprox", {"nonsense": 1.0})
