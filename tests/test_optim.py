"""Parameter groups, AdamW settings, warm-up + decay schedules and tower locking."""

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from clipl.optim import (
    OptimConfig,
    adam_defaults_for,
    apply_locks,
    build_optimizer,
    build_scheduler,
    lr_multiplier,
    param_groups,
)


class FakeVisual(nn.Module):
    def __init__(self):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(4))
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.ln_post = nn.LayerNorm(4)
        self.proj = nn.Parameter(torch.randn(4, 4))

    def lock(self, unlocked_groups=0, freeze_bn_stats=True):
        for p in self.parameters():
            p.requires_grad_(False)
        # Groups here: the blocks, then (ln_post, proj) as the last group.
        groups = [[b] for b in self.blocks] + [[self.ln_post]]
        for group in groups[len(groups) - unlocked_groups :] if unlocked_groups else []:
            for module in group:
                for p in module.parameters():
                    p.requires_grad_(True)


class FakeCLIP(nn.Module):
    """The CLIPModel surface optim.py relies on: visual, no_weight_decay, lock_*_tower."""

    def __init__(self):
        super().__init__()
        self.visual = FakeVisual()
        self.token_embedding = nn.Embedding(10, 4)
        self.positional_embedding = nn.Parameter(torch.zeros(6, 4))
        self.transformer = nn.Linear(4, 4)
        self.ln_final = nn.LayerNorm(4)
        self.text_projection = nn.Parameter(torch.randn(4, 4))
        self.logit_scale = nn.Parameter(torch.tensor(2.6))
        self.text_locked_with = None

    def no_weight_decay(self):
        return {"visual.class_embedding", "token_embedding.weight", "positional_embedding", "logit_scale"}

    def lock_image_tower(self, unlocked_groups=0):
        self.visual.lock(unlocked_groups)

    def lock_text_tower(self, unlocked_groups=0):
        self.text_locked_with = unlocked_groups
        for name, p in self.named_parameters():
            if not name.startswith("visual.") and name != "logit_scale":
                p.requires_grad_(False)


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_param_groups_decay_and_tower_lrs():
    model = FakeCLIP()
    groups = param_groups(model, OptimConfig(lr=1e-3, image_lr=2e-4, weight_decay=0.1))
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"image/decay", "image/no_decay", "text/decay", "text/no_decay"}
    assert _names(model, by_name["image/decay"]) == {f"visual.blocks.{i}.weight" for i in range(3)} | {"visual.proj"}
    assert _names(model, by_name["image/no_decay"]) == (
        {f"visual.blocks.{i}.bias" for i in range(3)}
        | {"visual.class_embedding", "visual.ln_post.weight", "visual.ln_post.bias"}
    )
    assert _names(model, by_name["text/decay"]) == {"transformer.weight", "text_projection"}
    assert _names(model, by_name["text/no_decay"]) == {
        "token_embedding.weight", "positional_embedding", "transformer.bias",
        "ln_final.weight", "ln_final.bias", "logit_scale",
    }
    assert [by_name[k]["lr"] for k in ("image/decay", "image/no_decay")] == [2e-4, 2e-4]
    assert [by_name[k]["lr"] for k in ("text/decay", "text/no_decay")] == [1e-3, 1e-3]
    assert by_name["image/decay"]["weight_decay"] == 0.1 and by_name["text/decay"]["weight_decay"] == 0.1
    assert by_name["image/no_decay"]["weight_decay"] == 0.0 and by_name["text/no_decay"]["weight_decay"] == 0.0
    # Every trainable parameter appears exactly once.
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())


def test_groups_of_a_torch_compiled_model():
    class Wrapper(nn.Module):
        # The shape of torch.compile's OptimizedModule (importing dynamo costs ~10 s here).
        def __init__(self, mod):
            super().__init__()
            self._orig_mod = mod

    model = FakeCLIP()
    compiled = Wrapper(model)
    assert next(n for n, _ in compiled.named_parameters()).startswith("_orig_mod.")
    names = {g["name"]: _names(model, g) for g in param_groups(compiled, OptimConfig())}
    assert names == {g["name"]: _names(model, g) for g in param_groups(model, OptimConfig())}


def test_frozen_params_are_left_out_and_unknown_names_fail():
    model = FakeCLIP()
    model.visual.requires_grad_(False)
    groups = param_groups(model, OptimConfig())
    assert {g["name"] for g in groups} == {"text/decay", "text/no_decay"}
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, OptimConfig())

    class Bad(FakeCLIP):
        def no_weight_decay(self):
            return {"token_embeding.weight"}

    with pytest.raises(ValueError, match="token_embeding.weight"):
        param_groups(Bad(), OptimConfig())


def test_zero3_partitioned_params_use_their_real_shape():
    model = FakeCLIP()
    # What deepspeed.zero.Init leaves behind: empty 1-d data, the true shape in ds_shape.
    for p in model.parameters():
        p.ds_shape = p.shape
        p.data = torch.empty(0)
    groups = {g["name"]: g for g in param_groups(model, OptimConfig())}
    assert _names(model, groups["text/decay"]) == {"transformer.weight", "text_projection"}
    assert "visual.proj" in _names(model, groups["image/decay"])


def test_build_optimizer_settings_and_decay_effect():
    model = FakeCLIP()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, betas=[0.9, 0.999], eps=1e-8)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    assert opt.defaults["fused"] is True  # None -> fused on CUDA and CPU; these are CPU tensors
    assert build_optimizer(model, OptimConfig(fused=False)).defaults["fused"] is False
    # With zero gradients AdamW only decays: matrices shrink by lr * wd, no-decay params stay put.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["text_projection"], before["text_projection"] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(after["positional_embedding"], before["positional_embedding"])
    torch.testing.assert_close(after["logit_scale"], before["logit_scale"])
    with pytest.raises(ValueError, match="optim.betas"):
        build_optimizer(model, OptimConfig(betas=[0.9]))


def _lrs(cfg, total, steps, model=None):
    model = model or FakeCLIP()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=total)
    seen = {}
    for step in range(max(steps) + 1):
        if step in steps:
            seen[step] = {g["name"]: g["lr"] for g in opt.param_groups}
        opt.step()
        sched.step()
    return seen


def test_cosine_schedule_values_per_group():
    cfg = OptimConfig(lr=1e-3, image_lr=4e-4, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    seen = _lrs(cfg, total=110, steps=[0, 4, 9, 10, 60, 110, 115])
    expected = {0: 1 / 10, 4: 5 / 10, 9: 1.0, 10: 1.0, 60: 0.1 + 0.9 * 0.5, 110: 0.1, 115: 0.1}
    for step, mult in expected.items():
        assert seen[step]["text/decay"] == pytest.approx(1e-3 * mult, rel=1e-9)
        # The image tower keeps its ratio to the text tower at every step.
        assert seen[step]["image/no_decay"] == pytest.approx(4e-4 * mult, rel=1e-9)
    quarter = lr_multiplier(35, cfg, 110)
    assert quarter == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_linear_and_constant_schedules():
    lin = OptimConfig(lr=1.0, warmup_steps=4, schedule="linear")
    assert [lr_multiplier(s, lin, 14) for s in (0, 3, 4, 9, 14)] == pytest.approx([0.25, 1.0, 1.0, 0.5, 0.0])
    const = OptimConfig(lr=1.0, warmup_steps=4, schedule="constant")
    assert [lr_multiplier(s, const, 14) for s in (1, 4, 100)] == pytest.approx([0.5, 1.0, 1.0])
    no_warm = OptimConfig(warmup_steps=0)
    assert lr_multiplier(0, no_warm, 10) == pytest.approx(1.0)


def test_optimizer_and_scheduler_state_load_weights_only(tmp_path):
    # Checkpoints must load with torch.load(weights_only=True): no config objects in the states.
    model = FakeCLIP()
    cfg = OptimConfig(warmup_steps=3)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=10)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    for _ in range(5):
        opt.step()
        sched.step()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh_opt = build_optimizer(FakeCLIP(), cfg)
    fresh = build_scheduler(fresh_opt, cfg, total_steps=10)
    fresh_opt.load_state_dict(state["opt"])
    fresh.load_state_dict(state["sched"])
    fresh_opt.step()
    fresh.step()
    sched.step()
    assert fresh.get_last_lr() == pytest.approx(sched.get_last_lr())


def test_schedule_errors_name_the_field():
    opt = build_optimizer(FakeCLIP(), OptimConfig())
    with pytest.raises(ValueError, match="optim.schedule 'cosin'.*'cosine'"):
        build_scheduler(opt, OptimConfig(schedule="cosin"), 100)
    # A run shorter than its warm-up (a smoke run of a paper recipe) warns and only warms up.
    with pytest.warns(UserWarning, match="warmup_steps"):
        short = build_scheduler(opt, OptimConfig(warmup_steps=2000), 1000)
    assert short.lr_lambdas[0](999) == pytest.approx(1000 / 2000)


def test_apply_locks():
    model = FakeCLIP()
    apply_locks(model, OptimConfig(lock_image=True, lock_image_unlocked_groups=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("visual.") and "ln_post" not in n for n in trainable)
    assert {"visual.ln_post.weight", "visual.ln_post.bias", "transformer.weight", "logit_scale"} <= trainable
    groups = {g["name"]: g for g in param_groups(model, OptimConfig())}
    assert _names(model, groups["image/no_decay"]) == {"visual.ln_post.weight", "visual.ln_post.bias"}
    assert "image/decay" not in groups
    model = FakeCLIP()
    apply_locks(model, OptimConfig(lock_text=True, lock_text_unlocked_groups=2))
    assert model.text_locked_with == 2
    assert all(p.requires_grad for p in model.visual.parameters())
    with pytest.raises(ValueError, match="lock_image_unlocked_groups"):
        apply_locks(FakeCLIP(), OptimConfig(lock_image_unlocked_groups=2))


@dataclass
class _Tower:
    arch: str


def test_adam_defaults_for_tower_arch():
    assert adam_defaults_for(_Tower("modified_resnet")) == ([0.9, 0.999], 1e-8)
    assert adam_defaults_for(_Tower("vit")) == ([0.9, 0.98], 1e-6)
    assert adam_defaults_for(_Tower("timm")) == ([0.9, 0.98], 1e-6)
    with pytest.raises(TypeError, match="arch"):
        adam_defaults_for(object())


def _tiny_clip(preset):
    # Built from the tower builders directly so this test does not depend on every optional
    # backbone of the registry importing.
    from clipl.models import presets
    from clipl.models.backbones.modified_resnet import build_modified_resnet
    from clipl.models.backbones.text_transformer import build_text_transformer
    from clipl.models.backbones.vit import build_vit
    from clipl.models.clip import CLIPModel

    cfg = getattr(presets, preset)()
    image = (build_vit if cfg.image.arch == "vit" else build_modified_resnet)(cfg.image, cfg.embed_dim)
    return cfg, CLIPModel(image, build_text_transformer(cfg.text, cfg.embed_dim))


def test_groups_on_tiny_vit_clip_model():
    cfg, model = _tiny_clip("tiny_vit")
    groups = {g["name"]: g for g in param_groups(model, OptimConfig(text_lr=1e-4))}
    decay_img, nodecay_img = _names(model, groups["image/decay"]), _names(model, groups["image/no_decay"])
    decay_txt, nodecay_txt = _names(model, groups["text/decay"]), _names(model, groups["text/no_decay"])
    assert {"visual.conv1.weight", "visual.proj"} <= decay_img
    assert {"visual.class_embedding", "visual.positional_embedding", "visual.ln_pre.weight"} <= nodecay_img
    assert {"text_projection", "transformer.resblocks.0.attn.in_proj_weight"} <= decay_txt
    assert {"token_embedding.weight", "positional_embedding", "logit_scale", "ln_final.bias"} <= nodecay_txt
    assert all(not n.startswith("visual.") for n in decay_txt | nodecay_txt)
    assert all(not n.endswith(".bias") for n in decay_img | decay_txt)
    assert groups["text/decay"]["lr"] == 1e-4 and groups["image/decay"]["lr"] == OptimConfig.lr
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    assert adam_defaults_for(cfg.image) == ([0.9, 0.98], 1e-6)


def test_locks_on_tiny_clip_models():
    cfg, model = _tiny_clip("tiny_rn")
    assert adam_defaults_for(cfg.image) == ([0.9, 0.999], 1e-8)
    _, model = _tiny_clip("tiny_vit")
    apply_locks(model, OptimConfig(lock_image=True, lock_image_unlocked_groups=1))
    trainable_visual = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual.")}
    assert trainable_visual == {"visual.proj"}  # the last group of the ViT is its projection
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("visual."))
    names = {g["name"] for g in param_groups(model, OptimConfig())}
    assert names == {"image/decay", "text/decay", "text/no_decay"}
