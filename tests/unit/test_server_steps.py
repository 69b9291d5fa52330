"""Each server step's first two steps by hand, and its checkpointed state format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from aggregator.checkpoint import CheckpointStore
from aggregator.state import Checkpoint
from fedge.spec import ModelSpec
from fedge.strategies import (
    STRATEGIES,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    ServerStep,
    make_strategy,
)


def _w(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, np.float32)}


def test_fedavg_is_the_identity_for_two_steps() -> None:
    step = FedAvg()
    a1, a2 = _w(0.5, -1.0), _w(2.0, 3.0)
    w1 = step.step(_w(1.0, -2.0), a1)
    np.testing.assert_array_equal(w1["w"], [0.5, -1.0])
    assert w1["w"] is not a1["w"] and w1["w"].dtype == np.float32
    w2 = step.step(w1, a2)
    np.testing.assert_array_equal(w2["w"], [2.0, 3.0])
    assert step.state() == {} and step.client_options() == {}


def test_fedprox_is_the_identity_and_tells_clients_mu() -> None:
    step = FedProx(mu=0.25)
    w1 = step.step(_w(1.0, -2.0), _w(0.5, -1.0))
    w2 = step.step(w1, _w(2.0, 3.0))
    np.testing.assert_array_equal(w2["w"], [2.0, 3.0])
    assert step.client_options() == {"proximal_mu": 0.25}
    assert step.state() == {}
    with pytest.raises(ValueError, match="mu must be >= 0"):
        FedProx(mu=-0.1)


def test_fedavgm_two_steps_by_hand() -> None:
    step = FedAvgM(server_lr=0.5, momentum=0.5)
    # Step 1: grad = w - a = [1,-2] - [0.5,-1] = [0.5,-1]; v = grad (no momentum yet);
    #         w1 = w - 0.5*v = [0.75, -1.5].
    w1 = step.step(_w(1.0, -2.0), _w(0.5, -1.0))
    np.testing.assert_array_equal(w1["w"], [0.75, -1.5])
    np.testing.assert_array_equal(step.state()["velocity/w"], [0.5, -1.0])
    # Step 2: grad = [0.75,-1.5] - [0.25,-1.5] = [0.5, 0]; v = 0.5*[0.5,-1] + [0.5,0] =
    #         [0.75, -0.5]; w2 = [0.75,-1.5] - 0.5*[0.75,-0.5] = [0.375, -1.25].
    w2 = step.step(w1, _w(0.25, -1.5))
    np.testing.assert_array_equal(w2["w"], [0.375, -1.25])
    np.testing.assert_array_equal(step.state()["velocity/w"], [0.75, -0.5])


def test_fedadam_two_steps_by_hand() -> None:
    # eta=1, beta_1=0.5, beta_2=0.75, tau=1, so v starts at tau^2 = 1.
    step = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1.0)
    # Step 1: delta = a - w = [1,-1]; m = 0.5*0 + 0.5*delta = [0.5,-0.5];
    #         v = 0.75*1 + 0.25*1 = [1, 1]; w1 = 0 + 1*m/(sqrt(1)+1) = [0.25, -0.25].
    w1 = step.step(_w(0.0, 0.0), _w(1.0, -1.0))
    np.testing.assert_array_equal(w1["w"], [0.25, -0.25])
    np.testing.assert_array_equal(step.state()["m/w"], [0.5, -0.5])
    np.testing.assert_array_equal(step.state()["v/w"], [1.0, 1.0])
    # Step 2: delta = [1.25,-1.25] - w1 = [1,-1]; m = 0.5*0.5 + 0.5*1 = [0.75,-0.75];
    #         v = 0.75*1 + 0.25*1 = [1, 1]; w2 = 0.25 + 0.75/2 = [0.625, -0.625].
    w2 = step.step(w1, _w(1.25, -1.25))
    np.testing.assert_array_equal(w2["w"], [0.625, -0.625])
    np.testing.assert_array_equal(step.state()["m/w"], [0.75, -0.75])


def test_fedyogi_two_steps_by_hand() -> None:
    step = FedYogi(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1.0)
    # Step 1: delta = [1.5, 0.5]; m = [0.75, 0.25]; Yogi v = v - 0.25*delta^2*sign(v - delta^2):
    #   coordinate 0: 1 - 0.25*2.25*sign(1-2.25) = 1 + 0.5625 = 1.5625 (grows, sqrt 1.25)
    #   coordinate 1: 1 - 0.25*0.25*sign(1-0.25) = 1 - 0.0625 = 0.9375 (shrinks)
    #   w1 = [0.75/(1.25+1), 0.25/(sqrt(0.9375)+1)] = [1/3, 0.12769...]
    w1 = step.step(_w(0.0, 0.0), _w(1.5, 0.5))
    np.testing.assert_allclose(step.state()["v/w"], [1.5625, 0.9375])
    np.testing.assert_allclose(w1["w"], [1 / 3, 0.25 / (np.sqrt(0.9375) + 1)], rtol=1e-6)
    # Step 2: delta = [0.5, 0] (aggregate = w1 + delta); m = 0.5*m + 0.5*delta = [0.625, 0.125];
    #   v0 = 1.5625 - 0.25*0.25*sign(1.5625-0.25) = 1.5; v1 = 0.9375 - 0 = 0.9375.
    w2 = step.step(w1, {"w": w1["w"] + np.array([0.5, 0.0], np.float32)})
    np.testing.assert_allclose(step.state()["m/w"], [0.625, 0.125], rtol=1e-6)
    np.testing.assert_allclose(step.state()["v/w"], [1.5, 0.9375], rtol=1e-6)
    expected = w1["w"] + np.array([0.625 / (np.sqrt(1.5) + 1), 0.125 / (np.sqrt(0.9375) + 1)])
    np.testing.assert_allclose(w2["w"], expected, rtol=1e-6)


def test_aggregate_is_the_old_name_of_step() -> None:
    a, b = FedAvgM(server_lr=0.5, momentum=0.5), FedAvgM(server_lr=0.5, momentum=0.5)
    np.testing.assert_array_equal(
        a.aggregate(_w(1.0, -2.0), _w(0.5, -1.0))["w"], b.step(_w(1.0, -2.0), _w(0.5, -1.0))["w"]
    )


# Checkpointed state: the names written before the split into reducers and steps ----------


@pytest.mark.parametrize(
    ("name", "keys"),
    [("fedavgm", {"velocity/w"}), ("fedadam", {"m/w", "v/w"}), ("fedyogi", {"m/w", "v/w"})],
)
def test_state_keys_are_the_checkpoint_format(name: str, keys: set[str]) -> None:
    step = make_strategy(name)
    step.step(_w(1.0, -2.0), _w(0.5, -1.0))
    assert set(step.state()) == keys


def test_fedavgm_resumes_from_a_checkpoint_in_the_old_format(tmp_path: Path) -> None:
    # What the aggregator wrote before this change after step 1 of the FedAvgM example
    # above: the model plus "strategy/velocity/w".
    store = CheckpointStore(tmp_path)
    store.save(
        Checkpoint(
            fleet="f",
            version=1,
            round_id=1,
            spec=ModelSpec(n_features=2),
            tensors=_w(0.75, -1.5),
            strategy_state={"velocity/w": np.array([0.5, -1.0], np.float64)},
        )
    )
    with safe_open(str(store.latest_path), framework="numpy") as fh:
        assert set(fh.keys()) == {"w", "strategy/velocity/w"}
    loaded = store.load_latest()
    assert loaded is not None
    step = FedAvgM(server_lr=0.5, momentum=0.5)
    step.load_state(loaded.strategy_state)
    # Step 2 of the hand-computed example: [0.375, -1.25].
    np.testing.assert_array_equal(step.step(loaded.tensors, _w(0.25, -1.5))["w"], [0.375, -1.25])


def test_adaptive_state_round_trip_and_unknown_keys() -> None:
    a = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1.0)
    a.step(_w(0.0, 0.0), _w(1.0, -1.0))
    b = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1.0)
    b.load_state({"m/w": np.array([0.5, -0.5]), "v/w": np.array([1.0, 1.0])})
    np.testing.assert_array_equal(
        b.step(_w(0.25, -0.25), _w(1.25, -1.25))["w"], [0.625, -0.625]
    )
    with pytest.raises(ValueError, match="unexpected fedadam state"):
        a.load_state({"velocity/w": np.zeros(2)})


def test_every_registered_strategy_is_a_server_step() -> None:
    assert sorted(STRATEGIES) == ["fedadam", "fedavg", "fedavgm", "fedprox", "fedyogi"]
    for name, factory in STRATEGIES.items():
        step = factory()
        assert isinstance(step, ServerStep) and step.name == name
