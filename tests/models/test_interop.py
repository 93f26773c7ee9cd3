"""Weights out to open_clip / transformers and back in, for every preset and custom sizes (CPU, random weights).

Every comparison is the same inputs through both implementations, to 1e-5 of the output scale.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

import clipl
from clipl.models import ModelConfig, build_model, list_presets, preset
from clipl.models.backbones.modified_resnet import ModifiedResNetConfig
from clipl.models.backbones.text_transformer import TextTransformerConfig
from clipl.models.backbones.vit import ViTConfig
from clipl.models.export import export
from clipl.models.weights import export_state_dict, load_model

from zoo_reference import random_tokens, randomize_batchnorm_

open_clip = pytest.importorskip("open_clip")

REL_TOL = 1e-5
# The OpenAI presets take 30-40 s each here (build, export, rebuild in open_clip/transformers on a
# shared 2-core CPU): they run in the slow tier; tiny presets and custom sizes run always.
OPENAI = {n for n in list_presets() if not n.startswith("tiny_")}
# Custom sizes: non-default heads (not width/64) and GELU, which shapes cannot reveal.
CUSTOM = {
    "custom_vit_gelu": ModelConfig(
        embed_dim=48, image=ViTConfig(image_size=48, patch_size=12, width=96, layers=2, heads=3, act="gelu"),
        text=TextTransformerConfig(context_length=20, width=64, heads=4, layers=2, act="gelu")),
    "custom_rn": ModelConfig(
        embed_dim=40, image=ModifiedResNetConfig(image_size=96, layers=[1, 2, 1, 1], width=24, heads=6),
        text=TextTransformerConfig(context_length=24, width=64, heads=2, layers=1)),
}


def _cfg(name: str) -> ModelConfig:
    return CUSTOM[name] if name in CUSTOM else preset(name)


def _params(names, slow_names):
    for n in names:
        yield pytest.param(n, marks=[pytest.mark.slow] if n in slow_names else [], id=n)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(_cfg(name)).eval()
    randomize_batchnorm_(model)  # OpenAI's init zeroes bn3 gains: make every residual branch count
    return model


def _inputs(model, n: int = 2):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, model.image_size, model.image_size, generator=g)
    return images, random_tokens(n, model.context_length)


def _close(ref: torch.Tensor, out: torch.Tensor, what: str) -> None:
    scale, diff = ref.abs().max().item(), (ref - out).abs().max().item()
    assert scale > 0 and diff <= REL_TOL * scale, f"{what}: max abs diff {diff:.3g} vs scale {scale:.3g}"


@torch.no_grad()
def _same_embeddings(a, b, images, tokens, encode_b=None):
    encode_b = encode_b or (lambda m, x, t: (m.encode_image(x), m.encode_text(t)))
    ref = a.encode_image(images), a.encode_text(tokens)
    out = encode_b(b, images, tokens)
    _close(ref[0], out[0], "image features")
    _close(ref[1], out[1], "text features")


def _export(model, tmp_path, fmt: str, name: str):
    """Through `clipl export` from a file (tiny and custom models); the big OpenAI presets skip the
    intermediate file and rebuild (the same writers, half the time)."""
    if name not in OPENAI:
        return export(export_state_dict(model, tmp_path / "w.safetensors"), tmp_path / fmt, fmt)
    from clipl.models.hf_format import write_hf_dir
    from clipl.models.open_clip_format import write_open_clip_dir

    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    write = write_open_clip_dir if fmt == "open_clip" else write_hf_dir
    return write(tmp_path / fmt, model.config, sd)


# ----------------------------------------------------------------------------------- open_clip
@pytest.mark.parametrize("name", list(_params([*list_presets(), *CUSTOM], OPENAI)))
def test_export_open_clip_local_dir(tmp_path, name):
    model = _model(name)
    out = _export(model, tmp_path, "open_clip", name)
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["quick_gelu"] == (model.config.text.act == "quick_gelu")
    assert cfg["preprocess_cfg"]["size"] == model.image_size
    ref, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    ref.eval()
    assert preprocess.transforms[0].size == model.image_size
    images, tokens = _inputs(model, n=1 if name in OPENAI else 2)
    _same_embeddings(model, ref, images, tokens)
    del ref, model


def _open_clip_cfg(kind: str, quick_gelu: bool) -> dict:
    text = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    vision = ({"layers": 2, "width": 96, "head_width": 32, "patch_size": 16, "image_size": 32} if kind == "vit"
              else {"layers": [1, 1, 2, 1], "width": 16, "head_width": 128, "image_size": 64})
    return {"embed_dim": 32, "quick_gelu": quick_gelu, "vision_cfg": vision, "text_cfg": text}


@pytest.mark.parametrize("kind", ["vit", "rn"])
@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quickgelu"])
def test_open_clip_folder_into_clipl(tmp_path, kind, quick_gelu):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    cfg = _open_clip_cfg(kind, quick_gelu)
    ref = open_clip.model.CLIP(**cfg).eval()
    randomize_batchnorm_(ref)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    model = load_model(f"local-dir:{tmp_path}").eval()
    assert model.config.text.act == ("quick_gelu" if quick_gelu else "gelu")
    images, tokens = _inputs(model)
    _same_embeddings(ref, model, images, tokens)


@pytest.mark.slow
def test_open_clip_name_and_bare_state_dict(tmp_path):
    """A LAION-style GELU ViT-B-32 state dict: refused bare, exact with model=, wrong as the QuickGELU preset."""
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    path = tmp_path / "vit_b32_laion.pt"
    torch.save(ref.state_dict(), path)
    with pytest.raises(ValueError, match=r"bare state dict.*GELU or QuickGELU.*preset='vit_b32' \(clipl preset, "
                                         r"QuickGELU\).*model='ViT-B-32' \(open_clip, GELU\)"):
        load_model(path)
    model = load_model(path, model="ViT-B-32").eval()
    assert model.config.image.act == model.config.text.act == "gelu"
    images, tokens = _inputs(model, n=1)
    _same_embeddings(ref, model, images, tokens)
    wrong = load_model(path, preset="vit_b32").eval()  # explicit, so allowed: and visibly different
    with torch.no_grad():
        assert (wrong.encode_text(tokens) - ref.encode_text(tokens)).abs().max() > 1e-3


def test_bare_state_dict_heads_refused_with_fix(tmp_path):
    """tiny_rn's attention pool has 4 heads; a bare dict's shapes would fit 8 as well."""
    model = _model("tiny_rn")
    bare = export_state_dict(model.state_dict(), tmp_path / "tiny_rn.safetensors")
    with pytest.raises(ValueError, match=r"nor the attention heads.*load_model\(path, preset=.*preset='tiny_rn'"):
        load_model(bare)
    loaded = load_model(bare, preset="tiny_rn").eval()
    _same_embeddings(model, loaded, *_inputs(model))
    # With the architecture recorded (what clipl writes), nothing needs naming.
    recorded = export_state_dict(model, tmp_path / "rec.pt")
    assert (tmp_path / "rec.pt.json").is_file()
    assert load_model(recorded).config.image.heads == 4


def test_export_refusals(tmp_path):
    model = build_model("tiny_rn")
    src = export_state_dict(model, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="ViT image tower only.*'modified_resnet'"):
        export(src, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="writes a new folder"):
        export(src, tmp_path / "taken", "open_clip")
    mixed = dataclasses.replace(preset("tiny_vit"), image=dataclasses.replace(preset("tiny_vit").image, act="gelu"))
    with pytest.raises(ValueError, match="one activation for both towers"):
        export(export_state_dict(build_model(mixed), tmp_path / "m.safetensors"), tmp_path / "oc", "open_clip")


# -------------------------------------------------------------------------------- transformers
VIT = [n for n in list_presets() if preset(n).image.arch == "vit"]


def _hf_features(m, images, tokens):
    def t(x):
        return x if torch.is_tensor(x) else x.pooler_output  # transformers >= 5 returns an output object

    return t(m.get_image_features(pixel_values=images)), t(m.get_text_features(input_ids=tokens))


@pytest.mark.parametrize("name", list(_params([*VIT, "custom_vit_gelu"], OPENAI)))
def test_hf_both_ways(tmp_path, name):
    transformers = pytest.importorskip("transformers")
    from clipl.models.hf_format import to_hf_config

    model = _model(name)
    out = _export(model, tmp_path, "hf", name)
    hf = transformers.CLIPModel.from_pretrained(str(out)).eval()
    images, tokens = _inputs(model, n=1 if name in OPENAI else 2)
    _same_embeddings(model, hf, images, tokens, _hf_features)
    del hf
    # transformers -> clipl: a randomly initialised CLIPModel of the same architecture.
    torch.manual_seed(3)
    theirs = transformers.CLIPModel(to_hf_config(model.config)).eval()
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours = load_model(tmp_path / "theirs").eval()
    assert ours.config.image.act == model.config.image.act and ours.config.image.heads == theirs.config.vision_config.num_attention_heads
    with torch.no_grad():
        ref = _hf_features(theirs, images, tokens)
        _close(ref[0], ours.encode_image(images), "image features (hf -> clipl)")
        _close(ref[1], ours.encode_text(tokens), "text features (hf -> clipl)")


def test_hf_tokenizer_and_processor(tmp_path):
    transformers = pytest.importorskip("transformers")
    from test_tokenizer import CORPUS

    from clipl.tokenizer import clean_text, get_tokenizer

    model = build_model("tiny_vit")
    out = export(export_state_dict(model, tmp_path / "w.safetensors"), tmp_path / "hf", "hf")
    tok = transformers.CLIPTokenizerFast.from_pretrained(str(out))
    processor = transformers.CLIPProcessor.from_pretrained(str(out))
    assert tok.model_max_length == model.context_length
    ours = get_tokenizer()
    # transformers' CLIP tokenizer does not run ftfy/HTML unescaping (clipl.tokenizer.clean_text) and
    # does not read the literal strings <start_of_text>/<end_of_text> as special tokens (OpenAI's and
    # clipl's do); on cleaned text without those strings it must give exactly clipl's ids.
    special = re.compile("<(start|end)_of_text>", re.I)
    texts = [t for t in CORPUS if not special.search(t)]
    assert len(texts) > 1500
    got = tok([clean_text(t) for t in texts])["input_ids"]
    bad = [t for t, ids in zip(texts, got) if ids != [ours.sot_token_id, *ours.encode(t), ours.eot_token_id]]
    assert not bad, f"{len(bad)} texts differ, first {bad[0]!r}"
    # Padded batches: the same ids up to the end-of-text token (HF pads with it, clipl with 0).
    captions = ["a photo of a cat", "two red squares on a blue circle", "A Dog!"]
    rows = processor(text=captions, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    ref = clipl.tokenize(captions, context_length=model.context_length)
    assert rows.shape == ref.shape
    mask = torch.arange(ref.shape[1]) <= ref.argmax(dim=1, keepdim=True)
    assert torch.equal(rows[mask], ref[mask])
    from PIL import Image

    pixels = processor(images=Image.new("RGB", (90, 70), (200, 30, 30)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, model.image_size, model.image_size)


def test_export_cli(tmp_path, capsys):
    from clipl.cli import main

    model = build_model("tiny_vit")
    src = export_state_dict(model, tmp_path / "w.pt")
    assert main(["export", str(src), str(tmp_path / "o.safetensors"), "--format", "openai", "--half"]) == 0
    loaded = load_model(tmp_path / "o.safetensors")  # the architecture travelled in the header
    assert loaded.config == model.config
    assert main(["export", str(src), str(tmp_path / "o.safetensors"), "--format", "openai"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    bare = tmp_path / "bare.pt"
    torch.save(model.state_dict(), bare)
    assert main(["export", str(bare), str(tmp_path / "oc"), "--format", "open_clip"]) == 2
    assert "--model NAME" in capsys.readouterr().err and not (tmp_path / "oc").exists()
    assert main(["export", str(bare), str(tmp_path / "oc"), "--format", "open_clip", "--model", "tiny_vit"]) == 0


@pytest.mark.parametrize("name", [n for n in list_presets() if not n.startswith("tiny_")])
def test_open_clip_configs_map_to_presets(name):
    """Cheap, every OpenAI preset: open_clip's own config of the model names it, both ways."""
    from clipl.models.layers import resolve_heads
    from clipl.models.open_clip_format import from_open_clip_cfg, to_open_clip_cfg
    from zoo_reference import OPENCLIP_NAMES

    theirs = open_clip.get_model_config(f"{OPENCLIP_NAMES[name]}-quickgelu")
    ours = preset(name)
    got = from_open_clip_cfg(theirs)
    image = dataclasses.replace(ours.image, heads=got.image.heads)
    text = dataclasses.replace(ours.text, heads=got.text.heads)
    assert got == dataclasses.replace(ours, image=image, text=text)
    width = ours.image.width * (32 if ours.image.arch == "modified_resnet" else 1)
    assert got.image.heads == resolve_heads(None, width // 64, width) and got.text.heads == ours.text.width // 64
    exported = to_open_clip_cfg(ours)
    assert exported["quick_gelu"] is True and exported["embed_dim"] == theirs["embed_dim"]
    for key in ("width", "layers", "image_size", "head_width", "patch_size"):
        assert exported["vision_cfg"].get(key) == theirs["vision_cfg"].get(key, exported["vision_cfg"].get(key)), key
    assert {k: exported["text_cfg"][k] for k in theirs["text_cfg"]} == theirs["text_cfg"]
    # The GELU name (LAION weights) maps to the same sizes with GELU in both towers.
    gelu = from_open_clip_cfg(open_clip.get_model_config(OPENCLIP_NAMES[name]))
    assert gelu.text.act == "gelu" and getattr(gelu.image, "act", "gelu") == "gelu"
