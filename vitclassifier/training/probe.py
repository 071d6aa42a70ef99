"""The linear probe: a classification head fitted on frozen backbone features, in seconds.

It is the first half of LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"):
fine-tuning that starts from a fitted head changes the backbone's features less than one that
starts from a random head, whose large early gradients flow back into the backbone. The probe's
accuracy is also a fact for the automatic recipe (how well the backbone's features already fit).

The features are what the model's ``classifier`` receives (``features.extract_features``, the
cached-features path), so the fitted weight and bias drop into that ``nn.Linear`` unchanged.
Multinomial logistic regression, full batch, by L-BFGS: thousands of 768-wide features take
seconds on a CPU. The features are standardised for the fit (L-BFGS converges in far fewer
iterations) and the scaling is folded back into the weights. The L2 strength is chosen on a
held-out fifth of the training features, then the head is refitted on all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.functional import cross_entropy

from vitclassifier.training.features import FeatureDataset

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # penalty on the standardised weights, per feature and class
HELD_OUT = 0.2  # the share of each class's training features that chooses the L2 strength
MAX_ITERATIONS = 200  # L-BFGS iterations per fit


@dataclass
class Probe:
    """A fitted head, shaped like the model's classifier (num_labels x hidden), and how it did."""
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    train_accuracy: float
    val_accuracy: float | None

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.T + self.bias

    def load_into(self, model: nn.Module) -> None:
        """Start fine-tuning from this head: copy it into the model's linear ``classifier``."""
        head = model.classifier
        with torch.no_grad():
            head.weight.copy_(self.weight.to(head.weight))
            head.bias.copy_(self.bias.to(head.bias))


def feature_tensors(dataset: FeatureDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of the readable samples of ``extract_features``' result."""
    rows = [(feature, label) for feature, label, _, bad in (dataset[i] for i in range(len(dataset)))
            if bad is None]
    if not rows:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.stack([f for f, _ in rows]).float(), torch.tensor([label for _, label in rows])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_labels: int,
               l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias minimising the mean cross-entropy + l2/2 ||W||^2 on standardised features,
    returned for the raw features."""
    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6) if len(features) > 1 else 1.0
    scaled = (features - mean) / std
    weight = torch.zeros(num_labels, features.shape[1], requires_grad=True)
    bias = torch.zeros(num_labels, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=MAX_ITERATIONS, tolerance_grad=1e-5,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = cross_entropy(scaled @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    raw = weight.detach() / std
    return raw, bias.detach() - raw @ mean


def held_out_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, held out): HELD_OUT of each class with at least 2 samples is held out."""
    generator = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        count = int(round(HELD_OUT * len(members))) if len(members) > 1 else 0
        held.append(members[:count])
        fit.append(members[count:])
    return torch.cat(fit), torch.cat(held)


def choose_l2(features: torch.Tensor, labels: torch.Tensor, num_labels: int, seed: int) -> float:
    """The L2_GRID strength with the lowest held-out cross-entropy (the middle one when nothing can
    be held out)."""
    fit, held = held_out_split(labels, seed)
    if len(held) == 0:
        return L2_GRID[len(L2_GRID) // 2]
    losses = {}
    for l2 in L2_GRID:
        weight, bias = fit_linear(features[fit], labels[fit], num_labels, l2)
        losses[l2] = cross_entropy(features[held] @ weight.T + bias, labels[held]).item()
    return min(losses, key=losses.__getitem__)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_labels: int,
              val_features: torch.Tensor | None = None, val_labels: torch.Tensor | None = None,
              seed: int = 42) -> Probe:
    """The linear probe on training ``features`` (n x hidden) and ``labels``, its L2 strength chosen
    on held-out training features; validation accuracy when validation features are given."""
    features = features.float()
    l2 = choose_l2(features, labels, num_labels, seed)
    weight, bias = fit_linear(features, labels, num_labels, l2)
    probe = Probe(weight, bias, l2, 0.0, None)
    probe.train_accuracy = accuracy(probe.logits(features), labels)
    if val_features is not None and val_labels is not None and len(val_labels):
        probe.val_accuracy = accuracy(probe.logits(val_features), val_labels)
    return probe
