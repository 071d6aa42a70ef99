"""The LR range test (training/lr_finder.py): it finds the right decade where a grid of short full
trainings tells the best LR, leaves no trace in the model or optimizer, stops on a non-finite loss,
and keeps the parameter groups' LRs in ratio."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.functional import cross_entropy

from vitclassifier.reporting.plots import write_lr_curve
from vitclassifier.training.lr_finder import lr_range_test, plain_step

GRID = [scale * 10.0 ** exponent for exponent in range(-5, 2) for scale in (1, 3)]


def noisy_classes(seed: int, n: int = 512, dim: int = 32, classes: int = 4) -> tuple[torch.Tensor, ...]:
    """Gaussian classes around fixed centres, noisy enough that the best LR is not "as high as stable"."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    draw = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, classes, (n,), generator=draw)
    return centres[labels] + 4.0 * torch.randn(n, dim, generator=draw), labels


def batches(inputs: torch.Tensor, labels: torch.Tensor, size: int = 32) -> list[tuple]:
    return [(inputs[i:i + size], labels[i:i + size]) for i in range(0, len(inputs), size)]


def softmax_model(optimizer: type, lr: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(32, 4)
    return model, optimizer(model.parameters(), lr=lr)


def best_by_grid(optimizer: type, train: list, val: tuple) -> float:
    """The LR whose two-epoch training gives the lowest validation loss."""
    losses = {}
    for lr in GRID:
        model, opt = softmax_model(optimizer, lr)
        step = plain_step(model, opt, cross_entropy)
        for batch in train * 2:
            step(batch)
        with torch.no_grad():
            loss = cross_entropy(model(val[0]), val[1]).item()
        losses[lr] = loss if math.isfinite(loss) else math.inf
    return min(losses, key=losses.__getitem__)


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_suggestion_lands_within_a_decade_of_the_best_lr(optimizer: type) -> None:
    train, val = batches(*noisy_classes(0)), noisy_classes(1)
    best = best_by_grid(optimizer, train, val)
    model, opt = softmax_model(optimizer, 1e-3)
    curve = lr_range_test(model, opt, plain_step(model, opt, cross_entropy), train, base_lr=1e-3)
    assert best / 10 <= curve.suggestion <= best * 10, (best, curve.suggestion)
    assert curve.lrs == sorted(curve.lrs) and len(curve.lrs) == len(curve.losses)


def test_the_sweep_leaves_no_trace() -> None:
    train = batches(*noisy_classes(0))
    model, opt = softmax_model(torch.optim.Adam, 1e-3)
    plain_step(model, opt, cross_entropy)(train[0])  # an optimizer with state, as mid-run
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = opt.state_dict()
    moments = {k: v.clone() for k, v in state["state"][0].items()}
    model.eval()
    torch.manual_seed(5)
    lr_range_test(model, opt, plain_step(model, opt, cross_entropy), train, base_lr=1e-3)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the random stream goes on as if nothing ran
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(moments[k], v) for k, v in opt.state_dict()["state"][0].items())
    assert opt.param_groups[0]["lr"] == 1e-3 and not model.training


def test_a_non_finite_loss_stops_the_sweep_and_the_weights_come_back() -> None:
    train = batches(*noisy_classes(0))
    model, opt = softmax_model(torch.optim.SGD, 1e-3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    step = plain_step(model, opt, cross_entropy)

    def blows_up(batch: tuple) -> float:
        loss = step(batch)
        return math.inf if opt.param_groups[0]["lr"] > 1e-3 else loss

    curve = lr_range_test(model, opt, blows_up, train, base_lr=1e-3, steps=60)
    assert len(curve.lrs) < 60 and max(curve.lrs) <= 1e-3
    assert "not finite" in curve.stopped
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_groups_keep_their_ratio_and_the_head_lr_is_reported(tmp_path) -> None:
    torch.manual_seed(0)
    body, head = nn.Linear(32, 16), nn.Linear(16, 4)
    model = nn.Sequential(body, nn.ReLU(), head)
    opt = torch.optim.AdamW([{"params": body.parameters(), "lr": 1e-4},
                             {"params": head.parameters(), "lr": 1e-3}])
    step, seen = plain_step(model, opt, cross_entropy), []

    def recording(batch: tuple) -> float:
        seen.append(opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"])
        return step(batch)

    curve = lr_range_test(model, opt, recording, batches(*noisy_classes(0)), base_lr=1e-4, head_lr=1e-3,
                          steps=30)
    assert seen and all(ratio == pytest.approx(10) for ratio in seen)
    assert curve.head_lr == pytest.approx(10 * curve.suggestion)
    write_lr_curve(curve.lrs, curve.losses, curve.suggestion, tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
