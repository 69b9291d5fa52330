"""Model zoo invariants and the local training loop (fedge.models, fedge.training)."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from fedge.messages import TrainingConfig
from fedge.models import build_model, copy_state, count_parameters, state_tensors
from fedge.spec import ModelSpec
from fedge.training import WindowDataset, evaluate, peak_rul, predict, train_local

ARCHITECTURES: tuple[str, ...] = typing.get_args(ModelSpec.model_fields["name"].annotation)
MAX_PARAMETERS = 200_000  # the Raspberry Pi budget
SMALL = {"n_features": 3, "window": 8, "hidden": 8}


def _spec(name: str, **kw: typing.Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": name, **kw})


def test_architectures_are_known() -> None:
    assert set(ARCHITECTURES) == {"cnn", "gru"}
    assert ModelSpec().name == "cnn"


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize(
    "kw",
    [
        {},  # C-MAPSS: 14 sensors, window 30
        {"n_features": 15},  # the simulator's sensors
        {"n_features": 24},  # C-MAPSS FD002/FD004 with settings
        {"n_features": 24, "context": "history"},
    ],
)
def test_parameter_budget(name: str, kw: dict[str, typing.Any]) -> None:
    assert count_parameters(build_model(_spec(name, **kw))) <= MAX_PARAMETERS


def test_default_cnn_is_tiny() -> None:
    # 30*8+8 temporal filters, 14*8*32+32 and 32*32+32 MLP, two 33-weight heads.
    assert count_parameters(build_model(ModelSpec())) == 4_986
    # History context: 14 sensors + 14 drift rates into the MLP (28*8*32+32).
    assert count_parameters(build_model(ModelSpec(context="history"))) == 8_570


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_history_inputs_become_sensors_and_drift_rates(name: str) -> None:
    spec = _spec(name, n_features=2, window=4, hidden=8, context="history")
    model = build_model(spec, seed=0).eval()
    with torch.no_grad():
        model.input_mean.copy_(torch.tensor([10.0, 0.0, 50.0]))  # sensors, then age
        model.input_std.copy_(torch.tensor([2.0, 4.0, 20.0]))
    # One time step: sensors (14, 8), baseline (12, 0), age 100 = twice the mean age.
    x = torch.tensor([[[14.0, 8.0, 12.0, 0.0, 100.0]]]).expand(3, 4, 5)
    got = model.normalise(x)
    # z = ((14-10)/2, 8/4) = (2, 2); baseline z = (1, 0); rate = (z - zb) / 2.
    torch.testing.assert_close(got[0, 0], torch.tensor([2.0, 2.0, 0.5, 1.0]))
    assert got.shape == (3, 4, spec.model_features)
    rul, _ = model(x)
    assert rul.shape == (3,) and torch.isfinite(rul).all()


def test_offset_noise_moves_sensors_not_drift_rates() -> None:
    spec = ModelSpec(n_features=3, window=8, hidden=8, context="history", dropout=0.0)
    model = build_model(spec, seed=0).train()
    seen: list[torch.Tensor] = []
    model.temporal.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    x = torch.randn(5, spec.window, spec.input_features).abs() + 1.0
    with torch.no_grad():
        model(x)
    clean = model.normalise(x).transpose(1, 2)  # (B, 2F, W)
    shift = seen[0] - clean
    f = spec.n_features
    torch.testing.assert_close(shift[:, f:], torch.zeros_like(shift[:, f:]))  # rates unmoved
    # One offset per window and sensor, constant over time, and not all zero.
    torch.testing.assert_close(shift[:, :f], shift[:, :f, :1].expand_as(shift[:, :f]))
    assert shift[:, :f].abs().max() > 0


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize("kw", [{}, SMALL, {**SMALL, "context": "history"}])
def test_output_shapes(name: str, kw: dict[str, typing.Any]) -> None:
    spec = _spec(name, **kw)
    model = build_model(spec).eval()
    rul, logit = model(torch.randn(5, spec.window, spec.input_features))
    assert rul.shape == (5,)
    assert logit.shape == (5,)
    assert torch.isfinite(rul).all() and torch.isfinite(logit).all()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_build_is_deterministic_per_seed(name: str) -> None:
    spec = _spec(name, **SMALL)
    a, b, c = (state_tensors(build_model(spec, seed=s)) for s in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_copy_state_is_load_state_dict_of_the_same_architecture(name: str) -> None:
    spec = _spec(name, **SMALL)
    source, via_copy, via_load = (build_model(spec, seed=s) for s in (1, 2, 2))
    with torch.no_grad():
        source.input_mean.fill_(3.0)  # buffers too, not only parameters
    copy_state(via_copy, source)
    via_load.load_state_dict(source.state_dict())
    for (name_a, a), (name_b, b) in zip(via_copy.state_dict().items(),
                                        via_load.state_dict().items(), strict=True):
        assert name_a == name_b and torch.equal(a, b)
    assert torch.equal(via_copy.input_mean, source.input_mean)
    assert via_copy.input_mean.data_ptr() != source.input_mean.data_ptr()  # copied, not shared
    other = build_model(_spec(name, **{**SMALL, "hidden": 4}))
    with pytest.raises(ValueError, match="same architecture"):
        copy_state(other, source)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_normalisation_buffers_are_applied(name: str) -> None:
    """A model with stats (m, s) on raw x equals the same weights on (x - m) / s."""
    spec = _spec(name, **SMALL)
    model = build_model(spec, seed=1).eval()
    x = torch.randn(4, spec.window, spec.n_features)
    mean = torch.tensor([100.0, -5.0, 0.5])
    std = torch.tensor([10.0, 0.1, 2.0])
    with torch.no_grad():
        expected = model((x - mean) / std)
        model.input_mean.copy_(mean)
        model.input_std.copy_(std)
        got = model(x)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-4)
    # The buffers travel with the weights (the global model frame carries them) ...
    assert {"input_mean", "input_std"} <= set(model.state_dict())
    # ... but are not trained (updates carry trainable tensors only).
    assert {"input_mean", "input_std"}.isdisjoint(n for n, _ in model.named_parameters())


def test_cnn_training_noise_only_in_train_mode() -> None:
    spec = ModelSpec(**SMALL)
    assert spec.offset_noise > 0 and spec.dropout > 0
    model = build_model(spec)
    x = torch.randn(6, spec.window, spec.n_features)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(x)[0])
        model.train()
        assert not torch.allclose(model(x)[0], model(x)[0])


def _synthetic(n_units: int, spec: ModelSpec, seed: int) -> WindowDataset:
    """Windows whose first sensor drifts upwards as RUL falls; the rest is noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n_units):
        life = int(rng.integers(60, 120))
        t = np.arange(life, dtype=np.float32)
        rul = (life - 1 - t).astype(np.float32)
        sensors = rng.normal(size=(life, spec.n_features)).astype(np.float32) * 0.1
        sensors[:, 0] += np.maximum(0.0, 60.0 - rul) / 20.0
        for end in range(spec.window - 1, life):
            xs.append(sensors[end - spec.window + 1 : end + 1])
            ys.append(min(float(rul[end]), spec.rul_cap))
    return WindowDataset(np.stack(xs), np.asarray(ys, dtype=np.float32))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_training_reduces_error(name: str) -> None:
    torch.set_num_threads(1)
    spec = _spec(name, **SMALL, rul_cap=60.0)
    train, held_out = _synthetic(12, spec, seed=0), _synthetic(4, spec, seed=1)
    model = build_model(spec, seed=0)
    before = evaluate(model, held_out).rmse
    result = train_local(
        model, train, TrainingConfig(epochs=15, batch_size=64, learning_rate=3e-3), seed=0
    )
    after = evaluate(model, held_out).rmse
    assert result.num_examples == len(train)
    assert result.steps == 15 * -(-len(train) // 64)
    assert np.isfinite(result.loss)
    assert after < 0.5 * before, (before, after)
    assert not model.training  # left ready for inference


def test_max_examples_subsamples() -> None:
    spec = ModelSpec(**SMALL)
    data = _synthetic(3, spec, seed=0)
    result = train_local(
        build_model(spec), data, TrainingConfig(batch_size=16, max_examples=40), seed=0
    )
    assert result.num_examples == 40
    assert result.steps == 3


def test_empty_data_is_a_no_op() -> None:
    spec = ModelSpec(**SMALL)
    model = build_model(spec)
    before = state_tensors(model)
    empty = WindowDataset.concat([], n_features=spec.n_features, window=spec.window)
    result = train_local(model, empty, TrainingConfig())
    assert result.num_examples == 0 and result.steps == 0
    after = state_tensors(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("release", [False, True])
def test_concat_is_numpy_concatenate_and_release_empties_the_list(release: bool) -> None:
    rng = np.random.default_rng(0)
    parts = [WindowDataset(rng.normal(size=(n, 5, 3)).astype(np.float32),
                           rng.uniform(0, 100, n).astype(np.float32)) for n in (4, 1, 7)]
    expected_x = np.concatenate([p.x for p in parts])
    expected_rul = np.concatenate([p.rul for p in parts])
    given = list(parts)
    out = WindowDataset.concat(given, n_features=3, window=5, release=release)
    np.testing.assert_array_equal(out.x, expected_x)
    np.testing.assert_array_equal(out.rul, expected_rul)
    assert out.x.dtype == np.float32 and not np.shares_memory(out.x, parts[0].x)
    # Released: the caller's list no longer holds the parts, so their windows can go
    # while the copy is made.
    assert given == ([] if release else parts)


def _distance(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        return float(sum(((p - reference[k]) ** 2).sum() for k, p in model.named_parameters()))


def test_fedprox_pulls_towards_reference() -> None:
    torch.set_num_threads(1)
    spec = ModelSpec(**SMALL, rul_cap=60.0)
    data = _synthetic(6, spec, seed=2)
    base = build_model(spec, seed=0)
    reference = {k: v.detach().clone() for k, v in base.named_parameters()}
    distances = {}
    for mu in (0.0, 1.0):
        local = build_model(spec)
        local.load_state_dict(base.state_dict())
        config = TrainingConfig(epochs=3, batch_size=32, learning_rate=3e-3, proximal_mu=mu)
        train_local(local, data, config, seed=0, reference=reference)
        distances[mu] = _distance(local, reference)
    assert 0 < distances[1.0] < 0.5 * distances[0.0], distances


def test_predict_clips_rul_and_returns_probabilities() -> None:
    spec = ModelSpec(**SMALL)
    model = build_model(spec)
    with torch.no_grad():
        model.rul_head.bias.fill_(-10.0)  # push every prediction below zero
    rul, prob = predict(model, np.zeros((3, spec.window, spec.n_features), np.float32))
    assert rul.shape == prob.shape == (3,)
    assert (rul == 0).all()
    assert ((prob >= 0) & (prob <= 1)).all()
    empty_rul, empty_prob = predict(model, np.zeros((0, spec.window, spec.n_features), np.float32))
    assert empty_rul.shape == empty_prob.shape == (0,)


@pytest.mark.parametrize("bias", [-10.0, 0.0, 0.3, 5.0])
def test_peak_rul_is_the_largest_rul_predict_gives(bias: float) -> None:
    spec = ModelSpec(**SMALL)
    model = build_model(spec, seed=2)
    with torch.no_grad():
        model.rul_head.bias.fill_(bias)  # -10: every prediction clipped to 0 by predict
    x = np.random.default_rng(0).normal(size=(7, spec.window, spec.n_features)).astype(np.float32)
    rul, _ = predict(model, x)
    assert peak_rul(model, x) == pytest.approx(float(rul.max()), rel=1e-6)
    assert peak_rul(model, x[:0]) == 0.0


@pytest.mark.parametrize(
    ("head", "value", "nan"),
    [("rul_head", math.nan, True), ("rul_head", math.inf, True), ("rul_head", -math.inf, False),
     ("fail_head", math.nan, True), ("fail_head", math.inf, False)],
)
def test_peak_rul_is_nan_where_predict_gives_nan_or_an_infinite_rul(
    head: str, value: float, nan: bool
) -> None:
    spec = ModelSpec(**SMALL)
    model = build_model(spec, seed=2)
    with torch.no_grad():
        getattr(model, head).bias.fill_(value)
    x = np.zeros((3, spec.window, spec.n_features), np.float32)
    rul, prob = predict(model, x)
    # predict: RUL clipped at 0 (so -inf reads 0), failure probability a sigmoid (inf -> 1).
    assert (not (np.isfinite(rul).all() and np.isfinite(prob).all())) is nan
    assert math.isnan(peak_rul(model, x)) is nan
