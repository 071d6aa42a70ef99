"""The one interface every runnable form of a classifier offers: ``model(pixel_values=batch).logits``.

A checkpoint's Hugging Face model has it already. The other forms are wrapped to match, so that
validation, prediction and the web page run any of them the same way:
  * ``HeadOnly``: the classification head alone, on cached backbone features (training/features.py);
  * ``TorchScriptModel``, ``OnnxModel``, ``OpenVinoModel`` (export/runtimes.py): exports.
``LogitsOnly`` goes the other way: a plain tensor in and out, which exporters and tracing need.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import nn


class ClassifierOutput(NamedTuple):
    """What a runnable model returns: ``.logits``, one row per image."""
    logits: torch.Tensor


class Runnable(Protocol):
    """Anything predict, evaluate and the web page can run."""

    def __call__(self, *, pixel_values: torch.Tensor) -> ClassifierOutput: ...

    def eval(self) -> Runnable: ...

    def to(self, device: torch.device) -> Runnable: ...


class FixedRuntime:
    """For runtimes outside PyTorch: always in inference mode, on the device they were loaded for.
    ``eval`` and ``to`` exist so that code written for modules can call them."""

    def eval(self) -> FixedRuntime:
        return self

    def to(self, device: torch.device) -> FixedRuntime:
        return self


class LogitsOnly(nn.Module):
    """The classifier with a plain tensor in and out: exporters and tracing need that, not a ModelOutput."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class HeadOnly(nn.Module):
    """Calls ``model.classifier`` on features, answering like the full model (``.logits``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> ClassifierOutput:
        return ClassifierOutput(self.model.classifier(pixel_values))
