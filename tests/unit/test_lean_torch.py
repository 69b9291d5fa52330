"""fedge.lean_torch: the undecorated Adam step is bit for bit torch's, and the guards hold."""

from __future__ import annotations

import torch
from torch import nn

from fedge.lean_torch import _undecorated_step, adam_step, avoid_dynamo_import


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(24, 1))
    b = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(24, 1))
    b.load_state_dict(a.state_dict())
    return a, b


def _steps(model: nn.Module, step: str, *, n: int = 5, **adam: object) -> None:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2, **adam)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(8, 3, 8, generator=generator)
        loss = model(x).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if step == "torch":
            optimiser.step()
        else:
            inner = _undecorated_step(optimiser)
            assert inner is not None  # the installed torch's wrappers are recognised
            with torch.no_grad():
                inner(optimiser)


def test_the_undecorated_step_is_bit_identical_to_optimizer_step() -> None:
    for options in ({}, {"amsgrad": True, "weight_decay": 0.1}, {"foreach": False}):
        a, b = _pair()
        _steps(a, "torch", **options)
        _steps(b, "lean", **options)
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
            assert torch.equal(pa, pb), (name, options)
            assert not torch.equal(pa, _pair()[0].state_dict()[name])  # it did train


def test_adam_step_leaves_grad_mode_as_it_was() -> None:
    model, _ = _pair()
    optimiser = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 8)).sum().backward()
    assert torch.is_grad_enabled()
    adam_step(optimiser)
    assert torch.is_grad_enabled()


def test_a_step_without_torchs_wrapper_is_not_unwrapped() -> None:
    class Plain(torch.optim.SGD):
        def step(self, closure: object = None) -> None:  # type: ignore[override]
            return None

    model, _ = _pair()
    assert _undecorated_step(Plain(model.parameters(), lr=0.1)) is None


def test_avoid_dynamo_import_is_a_no_op_once_dynamo_is_loaded() -> None:
    import torch._dynamo  # noqa: F401 - this test process may compile: leave torch alone

    assert avoid_dynamo_import() is False
