"""CLIPModel: an image tower and a text tower embedding into one space, plus the learned temperature.

The model knows nothing of Lightning; the training system (clipl.module) wraps it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipl.models.config import ModelConfig
from clipl.models.registry import build_tower


class CLIPOutput(NamedTuple):
    """What CLIPModel.forward returns: normalised fp32 features and the raw (log) temperature."""

    image_features: torch.Tensor
    text_features: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: Optional[torch.Tensor]


class CLIPModel(nn.Module):
    """Image tower ``visual`` + a text tower + ``logit_scale`` (and optionally ``logit_bias``).

    A text tower with ``hoist_parameters = True`` (the OpenAI text transformer) has its parameters
    registered at the top level of this module (``transformer.*``, ``token_embedding.weight`` ...),
    so the state dict is OpenAI's layout exactly; any other text tower lives under ``text.``.
    """

    def __init__(
        self,
        visual: nn.Module,
        text: nn.Module,
        init_logit_scale: float = ModelConfig.init_logit_scale,
        init_logit_bias: Optional[float] = None,
    ):
        super().__init__()
        if visual.output_dim != text.output_dim:
            raise ValueError(f"image tower output_dim {visual.output_dim} != text tower output_dim {text.output_dim}")
        self.visual = visual
        self._text_hoisted = bool(getattr(text, "hoist_parameters", False))
        if self._text_hoisted:
            text.hoist_into(self)
            object.__setattr__(self, "_text_tower", text)  # unregistered: its parameters are ours now
        else:
            self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = None if init_logit_bias is None else nn.Parameter(torch.tensor(float(init_logit_bias)))

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "CLIPModel":
        """Build both towers from their registered configs (dispatch on each config's ``arch``)."""
        for name in ("image", "text"):
            if getattr(cfg, name) is None:
                raise ValueError(f"ModelConfig.{name} is None: set it to a tower config (see clipl.models.list_archs())")
        model = cls(
            build_tower(cfg.image, cfg.embed_dim),
            build_tower(cfg.text, cfg.embed_dim),
            init_logit_scale=cfg.init_logit_scale,
            init_logit_bias=cfg.init_logit_bias,
        )
        model.set_grad_checkpointing(cfg.grad_checkpointing)
        # Recorded so exports carry the exact architecture (clipl.models.weights.export_state_dict).
        model.config = cfg
        return model

    @property
    def text_tower(self) -> nn.Module:
        """The text tower object (for hoisted towers: not a registered submodule)."""
        return self._text_tower if self._text_hoisted else self.text

    @property
    def image_size(self) -> int:
        return self.visual.image_size

    @property
    def context_length(self) -> int:
        return self.text_tower.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, embed_dim) features (fp32 and unit-norm if ``normalize``)."""
        x = self.visual(images)
        return F.normalize(x.float(), dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, L) token ids -> (B, embed_dim) features (fp32 and unit-norm if ``normalize``)."""
        x = self.text_tower(tokens)
        return F.normalize(x.float(), dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> CLIPOutput:
        return CLIPOutput(
            self.encode_image(images, normalize=True),
            self.encode_text(tokens, normalize=True),
            self.logit_scale,
            self.logit_bias,
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing on/off in both towers."""
        self.visual.set_grad_checkpointing(enable)
        self.text_tower.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """Full names of parameters exempt from weight decay besides the generic ``ndim < 2`` rule."""
        names = {"logit_scale"} | ({"logit_bias"} if self.logit_bias is not None else set())
        names |= {f"visual.{n}" for n in self.visual.no_weight_decay()}
        prefix = "" if self._text_hoisted else "text."
        names |= {f"{prefix}{n}" for n in self.text_tower.no_weight_decay()}
        return names

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze the image tower except its last ``unlocked_groups`` layer groups (LiT)."""
        self.visual.lock(unlocked_groups=unlocked_groups, freeze_bn_stats=freeze_bn_stats)

    def lock_text_tower(self, unlocked_groups: int = 0) -> None:
        """Freeze the text tower except its last ``unlocked_groups`` layer groups."""
        self.text_tower.lock(unlocked_groups=unlocked_groups)

    def to_channels_last(self) -> "CLIPModel":
        """Store the image tower's weights channels-last (faster convolutions on tensor cores), in place."""
        self.visual.to(memory_format=torch.channels_last)
        return self

    def compile_towers(self) -> "CLIPModel":
        """torch.compile the image and text towers in place, so state-dict keys are unchanged."""
        # nn.Module.compile compiles forward in place; torch.compile(module) would wrap it and prefix
        # every state-dict key with `_orig_mod.`, breaking OpenAI-layout checkpoints. text_tower is the
        # tower object even when its parameters are hoisted to the top level (OpenAI layout).
        for tower in (self.visual, self.text_tower):
            tower.compile()
        return self

    def apply_switches(self, channels_last: bool = False, compile: bool = False) -> "CLIPModel":
        """The run's model switches (trainer.channels_last, trainer.compile), in place; keys unchanged."""
        if channels_last:
            self.to_channels_last()
        if compile:
            self.compile_towers()
        return self
