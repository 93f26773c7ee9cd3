"""Shared helpers for the model-zoo tests: open_clip reference names and random inputs."""

from __future__ import annotations

import torch
from torch import nn

# clipl preset -> open_clip model name (OpenAI configs; QuickGELU forced to match OpenAI's weights).
OPENCLIP_NAMES = {
    "rn50": "RN50",
    "rn101": "RN101",
    "rn50x4": "RN50x4",
    "rn50x16": "RN50x16",
    "rn50x64": "RN50x64",
    "vit_b32": "ViT-B-32",
    "vit_b16": "ViT-B-16",
    "vit_l14": "ViT-L-14",
    "vit_l14_336": "ViT-L-14-336",
}
BIG = {"rn50x16", "rn50x64", "vit_l14", "vit_l14_336"}

# OpenAI parameter counts (millions, image + text + logit_scale), FACTS.md.
OPENAI_PARAMS_M = {
    "rn50": 102.01,
    "rn101": 119.69,
    "rn50x4": 178.30,
    "rn50x16": 290.98,
    "rn50x64": 623.26,
    "vit_b32": 151.28,
    "vit_b16": 149.62,
    "vit_l14": 427.62,
    "vit_l14_336": 427.94,
}

SOT, EOT = 49406, 49407


def random_tokens(batch: int, context_length: int, vocab_size: int = 49408, seed: int = 0) -> torch.Tensor:
    """CLIP-shaped token rows: SOT, random ids, EOT (the row's maximum) at a random position, zero padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(batch, context_length, dtype=torch.long)
    for i in range(batch):
        eot = int(torch.randint(1, context_length, (1,), generator=g))
        tokens[i, 0] = min(SOT, vocab_size - 2)
        tokens[i, 1:eot] = torch.randint(1, min(SOT, vocab_size - 2), (eot - 1,), generator=g)
        tokens[i, eot] = vocab_size - 1
    return tokens


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial gains, biases and running statistics.

    OpenAI's init zeroes every bn3 gain, which would make the residual branches (and the parity test
    of them) vacuous.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
