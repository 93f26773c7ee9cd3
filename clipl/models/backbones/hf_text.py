"""Text tower adapter for Hugging Face transformers: a model built from a config (random weights),
pooled ("cls", "mean" or "eot") and projected to the embedding space.

Needs the ``hf`` extra (``pip install clipl[hf]``); transformers is imported only when a tower is
built, and only ``AutoConfig.for_model`` + ``AutoModel.from_config`` are used: nothing is downloaded.
It consumes clipl's CLIP token ids: <end_of_text> is the highest id in a row, and the zero padding
after it (id 0 is also the real token "!") is masked out by position, not by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from clipl.models.layers import lock_groups
from clipl.models.registry import register
from clipl.models.tower import Projection, projection_layers
from clipl.registry import check_literals

Pooler = Literal["cls", "mean", "eot"]


@dataclass
class HFTextConfig:
    """A transformers encoder of the given ``model_type`` with explicit size fields."""

    arch: str = "hf_text"
    """Registry key of this tower architecture."""
    model_type: str = "bert"
    """transformers model type for ``AutoConfig.for_model`` ("bert", "roberta", "distilbert", ...)."""
    hidden_size: int = 512
    """Token width (transformers ``hidden_size``)."""
    num_layers: int = 12
    """Number of transformer layers (``num_hidden_layers``)."""
    num_heads: int = 8
    """Attention heads (``num_attention_heads``)."""
    intermediate_size: Optional[int] = None
    """MLP width, for configs that have ``intermediate_size``; None -> 4 * hidden_size."""
    vocab_size: int = 49408
    """Token-embedding rows; 49408 matches clipl's CLIP tokenizer."""
    context_length: int = 77
    """Maximum tokens per text (``max_position_embeddings``)."""
    pooler: Pooler = "eot"
    """How token features become one vector: "cls" (first token), "mean" (over real tokens), "eot"."""
    proj: Projection = "linear"
    """Projection to embed_dim: "linear", "mlp" (Linear-GELU-Linear, hidden (hidden_size + embed_dim) // 2)
    or "none" (hidden == embed_dim)."""
    proj_bias: bool = False
    """Whether the projection layers have a bias."""
    pad_token_id: Optional[int] = None
    """Passed to the transformers config; None keeps every embedding row trainable (CLIP pads with
    id 0, which is also a real token). Models that derive positions from padding (RoBERTa) need one."""

    def __post_init__(self) -> None:
        check_literals(self, "model.text")


class HFTextTower(nn.Module):
    """(B, L) CLIP token ids -> (B, output_dim): a transformers encoder, pooled and projected."""

    def __init__(self, transformer: nn.Module, output_dim: int, context_length: int, vocab_size: int,
                 pooler: str, proj: str, proj_bias: bool):
        super().__init__()
        self.transformer = transformer
        self.output_dim, self.context_length, self.vocab_size = output_dim, context_length, vocab_size
        self.pooler = pooler
        layers = projection_layers(transformer.config.hidden_size, output_dim, proj, proj_bias, "text.proj")
        # One Linear keeps its plain key (proj.weight); "mlp" is proj.0/proj.2; "none" an Identity.
        self.proj = layers[0] if len(layers) == 1 else nn.Sequential(*layers) if layers else nn.Identity()

    def forward(self, tokens: torch.Tensor, pre_projection: bool = False) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"text tokens must be (B, L) with L <= context_length={self.context_length}, got {tuple(tokens.shape)}"
            )
        eot = tokens.argmax(dim=-1)
        # Real tokens are those up to and including <end_of_text>; the rest is padding.
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] <= eot[:, None]
        hidden = self.transformer(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        if self.pooler == "cls":
            pooled = hidden[:, 0]
        elif self.pooler == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(dim=1) / m.sum(dim=1)
        else:
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot]
        return pooled if pre_projection else self.proj(pooled)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        model = self.transformer
        # transformers >= 5 renamed gradient_* to activation_checkpointing_*; older ones lack the latter.
        new_api = hasattr(model, "activation_checkpointing_enable")
        if enable:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
            if new_api:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif self.grad_checkpointing:
            model.activation_checkpointing_disable() if new_api else model.gradient_checkpointing_disable()

    @property
    def grad_checkpointing(self) -> bool:
        """Whether the transformers model recomputes activations in the backward pass."""
        model = self.transformer
        if hasattr(model, "activation_checkpointing_enable"):
            return bool(model.is_activation_checkpointing)
        return bool(model.is_gradient_checkpointing)

    def no_weight_decay(self) -> set[str]:
        # Token, position and type embeddings, like the OpenAI text tower's embeddings.
        return {f"transformer.{name}.weight" for name, m in self.transformer.named_modules()
                if isinstance(m, nn.Embedding)}

    def _layer_list(self) -> tuple[str, nn.ModuleList]:
        n = self.transformer.config.num_hidden_layers
        for name, m in self.transformer.named_modules():
            if isinstance(m, nn.ModuleList) and len(m) == n:
                return name, m
        raise ValueError(f"cannot find the {n} layers of {type(self.transformer).__name__} to lock")

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze all but the last ``unlocked_groups`` of [embeddings, layer 0..L-1, final norms, projection]."""
        prefix, layers = self._layer_list()
        layer_names = {f"{prefix}.{i}.{n}" for i, layer in enumerate(layers) for n, _ in layer.named_parameters()}
        before, after, seen_layer = [], [], False
        for name, p in self.transformer.named_parameters():
            if name in layer_names:
                seen_layer = True
            else:
                (after if seen_layer else before).append(p)
        groups = [before, *[[layer] for layer in layers], after, [self.proj]]
        lock_groups(self, [g for g in groups if g], unlocked_groups)


@register("hf_text", config=HFTextConfig)
def build_hf_text(cfg: HFTextConfig, embed_dim: int) -> HFTextTower:
    """Build a randomly initialised transformers encoder from ``cfg`` and a projection to ``embed_dim``."""
    try:
        from transformers import AutoConfig, AutoModel
    except ImportError as err:
        raise ImportError("the Hugging Face text tower needs transformers: pip install 'clipl[hf]'") from err
    try:
        config = AutoConfig.for_model(cfg.model_type)
    except ValueError as err:
        raise ValueError(f"text.model_type={cfg.model_type!r} is not a transformers model type") from err
    # The standard names; configs with other spellings (GPT-2's n_embd, ...) map them themselves.
    config.hidden_size = cfg.hidden_size
    config.num_hidden_layers = cfg.num_layers
    config.num_attention_heads = cfg.num_heads
    config.vocab_size = cfg.vocab_size
    config.max_position_embeddings = cfg.context_length
    config.pad_token_id = cfg.pad_token_id
    if hasattr(config, "intermediate_size"):
        config.intermediate_size = cfg.intermediate_size or 4 * cfg.hidden_size
    model = AutoModel.from_config(config)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # transformers' own pooler is unused: its parameters would get no gradient
    return HFTextTower(model, embed_dim, cfg.context_length, cfg.vocab_size, cfg.pooler, cfg.proj, cfg.proj_bias)
