"""OpenAI's causal text Transformer tower: token + positional embeddings, pre-LN blocks, EOT pooling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from clipl.models.layers import ACTIVATIONS, LayerNorm, Transformer, lock_groups, materialized, resolve_heads
from clipl.models.registry import register


@dataclass
class TextTransformerConfig:
    """Hyperparameters of a CLIP text transformer tower."""

    arch: str = "text_transformer"
    """Registry key of this tower architecture."""
    context_length: int = 77
    """Maximum number of tokens (rows of the positional embedding)."""
    vocab_size: int = 49408
    """Token-embedding rows; 49408 for CLIP's byte-level BPE."""
    width: int = 512
    """Transformer width (token dimension)."""
    heads: Optional[int] = None
    """Attention heads; None -> width // 64 (head width 64)."""
    layers: int = 12
    """Number of residual attention blocks."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of width."""
    act: str = "quick_gelu"
    """MLP activation: "quick_gelu" (OpenAI's weights) or "gelu" (any name registered in
    clipl.models.layers.ACTIVATIONS)."""

    def __post_init__(self) -> None:
        ACTIVATIONS.get(self.act, "model.text.act")  # a registry: a recipe may register its own activation


class TextTransformer(nn.Module):
    """(B, L<=context_length) token ids -> (B, output_dim): the final-LN feature at the EOT token, projected.

    The end-of-text token has the highest id of the vocabulary, so ``argmax`` over each row finds it.
    """

    hoist_parameters = True
    """CLIPModel registers this tower's parameters at its own top level (OpenAI's state-dict layout)."""
    _hoist_order = ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection")

    def __init__(
        self,
        context_length: int,
        vocab_size: int,
        width: int,
        layers: int,
        heads: int,
        output_dim: int,
        mlp_ratio: float = 4.0,
        act: str = "quick_gelu",
    ):
        super().__init__()
        self.context_length, self.vocab_size, self.output_dim = context_length, vocab_size, output_dim
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act)
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.init_parameters()

    def init_parameters(self) -> None:
        """OpenAI's init: token 0.02, positions 0.01, depth-scaled blocks, projection width^-0.5."""
        with materialized(self):
            nn.init.normal_(self.token_embedding.weight, std=0.02)
            nn.init.normal_(self.positional_embedding, std=0.01)
            self.transformer.init_openai_()
            nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    def hoist_into(self, host: nn.Module) -> None:
        """Move this tower's parameters and submodules onto ``host`` (which then owns them alone).

        The tower keeps working: look-ups of the moved names fall through to ``host``. Single
        ownership keeps .to()/.half(), DeepSpeed partitioning and optimizers seeing one set of names.
        """
        for name in self._hoist_order:
            if name in self._parameters:
                host.register_parameter(name, self._parameters.pop(name))
            else:
                host.add_module(name, self._modules.pop(name))
        object.__setattr__(self, "_host", host)

    def __getattr__(self, name: str):
        # Only reached for names not in __dict__ (nn.Module keeps parameters/submodules in dicts).
        host = self.__dict__.get("_host")
        if host is not None and name in self._hoist_order:
            return getattr(host, name)
        return super().__getattr__(name)

    def forward(self, tokens: torch.Tensor, pre_projection: bool = False) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"text tokens must be (B, L) with L <= context_length={self.context_length}, got {tuple(tokens.shape)}"
            )
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n].to(self.token_embedding.weight.dtype)
        x = self.ln_final(self.transformer(x, causal=True))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x if pre_projection else x @ self.text_projection

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"token_embedding.weight", "positional_embedding"}

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze all but the last ``unlocked_groups`` of [embeddings, block 0..L-2, last block + ln_final, projection]."""
        blocks = list(self.transformer.resblocks)
        groups = [
            [self.token_embedding, self.positional_embedding],
            *[[b] for b in blocks[:-1]],
            [blocks[-1], self.ln_final],
            [self.text_projection],
        ]
        lock_groups(self, groups, unlocked_groups)


@register("text_transformer", config=TextTransformerConfig)
def build_text_transformer(cfg: TextTransformerConfig, embed_dim: int) -> TextTransformer:
    """Build a causal text transformer tower projecting to ``embed_dim``."""
    heads = resolve_heads(cfg.heads, max(1, cfg.width // 64), cfg.width, field="text.heads")
    return TextTransformer(
        cfg.context_length, cfg.vocab_size, cfg.width, cfg.layers, heads, embed_dim, cfg.mlp_ratio, cfg.act
    )
