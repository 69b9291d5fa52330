"""Choosing the strategy's parts by name in the aggregator config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedge.config import AggregatorConfig, load_config
from fedge.errors import ConfigError
from fedge.strategies import FedAdam, FedProx, Strategy, StreamingMean, SyncParticipation


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("FEDGE_"):
            monkeypatch.delenv(name)
    yield


def test_defaults_are_mean_and_sync() -> None:
    config = load_config(AggregatorConfig)
    assert (config.strategy, config.reducer, config.participation) == ("fedavg", "mean", "sync")
    assert config.reducer_options == {} and config.participation_options == {}


def test_parts_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "aggregator.toml"
    path.write_text(
        'strategy = "fedadam"\nreducer = "mean"\nparticipation = "sync"\n'
        "min_clients = 3\ntarget_clients = 5\nround_timeout_s = 30\n"
        "[strategy_options]\neta = 0.5\n"
    )
    strategy = Strategy.from_settings(load_config(AggregatorConfig, path))
    assert isinstance(strategy.server_step, FedAdam) and strategy.server_step.eta == 0.5
    assert isinstance(strategy.reducer({}), StreamingMean)
    policy = strategy.participation
    assert isinstance(policy, SyncParticipation)
    assert (policy.min_clients, policy.target_clients, policy.round_timeout_s) == (3, 5, 30.0)


def test_parts_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGE_AGGREGATOR_STRATEGY", "fedprox")
    monkeypatch.setenv("FEDGE_AGGREGATOR_STRATEGY_OPTIONS", '{"mu": 0.3}')
    monkeypatch.setenv("FEDGE_AGGREGATOR_REDUCER", "mean")
    strategy = Strategy.from_settings(load_config(AggregatorConfig))
    assert isinstance(strategy.server_step, FedProx)
    assert strategy.server_step.client_options() == {"proximal_mu": 0.3}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reducer", "geomedian",
         r"reducer: .*unknown reducer 'geomedian'; choose one of \['krum', 'mean', 'median', "
         r"'multi_krum', 'trimmed_mean'\]"),
        ("participation", "gossip",
         r"participation: .*unknown participation policy 'gossip'; "
         r"choose one of \['fedbuff', 'sync'\]"),
        ("strategy", "fedmagic", r"strategy: .*unknown strategy 'fedmagic'; choose one of"),
    ],
)
def test_unknown_names_list_the_choices(field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(AggregatorConfig, **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reducer_options": {"trim": 0.1}}, "bad options for reducer 'mean'"),
        ({"participation_options": {"k": 4.0}}, "bad options for participation 'sync'"),
        ({"strategy": "fedavgm", "strategy_options": {"momentum": 2.0}},
         "bad options for strategy 'fedavgm'"),
    ],
)
def test_bad_options_fail_when_the_strategy_is_built(
    overrides: dict[str, object], message: str
) -> None:
    config = load_config(AggregatorConfig, **overrides)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        Strategy.from_settings(config)
