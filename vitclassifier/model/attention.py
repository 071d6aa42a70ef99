"""Attention as the model runs it on CPUs in bf16: an attention function registered with transformers'
AttentionInterface when bf16 is applied (run_in_bf16), and the casts that keep more of the model in bf16."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface

BF16_SOFTMAX = "bf16_softmax"  # the name bf16_softmax_attention is registered under


def bf16_softmax_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention with the softmax taking and giving bf16 (it still sums in fp32
    inside), instead of an fp32 copy of every score matrix and its backward."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scaling, key.transpose(2, 3))
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.dropout(scores.softmax(dim=-1), dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def register_bf16_softmax() -> str:
    """Make bf16_softmax_attention known to transformers (again is harmless); returns the name that
    ``set_attn_implementation`` takes. Called where bf16 is applied, not on import."""
    AttentionInterface.register(BF16_SOFTMAX, bf16_softmax_attention)
    return BF16_SOFTMAX


def run_in_bf16(model: nn.Module, device: torch.device, dtype: torch.dtype | None, training: bool) -> None:
    """On a CPU under bf16 autocast, make more of the model run in bf16, so that training steps and
    prediction get faster (benchmarks/levers.py measures it; the figures are in docs/performance.md):
      * attention as plain bf16 matmuls (bf16_softmax_attention): PyTorch's fused SDPA kernel for
        CPUs runs far below the bf16 matmul speed, and took a large share of a training step;
      * the activations between blocks in bf16 rather than fp32, halving the memory traffic of
        LayerNorm, GELU, the residual adds and their backward. Training keeps fp32 weights (small
        AdamW updates vanish in bf16) and casts only the embeddings' output; prediction casts the
        whole model.
    Nothing changes on GPUs (their SDPA kernels are fast) or in fp32. The checkpoint is unaffected."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        return
    if getattr(model, "_supports_attention_backend", False):
        model.set_attn_implementation(register_bf16_softmax())
    if not training:
        model.to(torch.bfloat16)
    elif hasattr(model.base_model, "embeddings"):
        model.base_model.embeddings.register_forward_hook(lambda module, inputs, output: output.to(dtype))
