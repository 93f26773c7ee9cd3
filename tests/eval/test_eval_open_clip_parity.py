"""clipl's zero-shot evaluation of an open_clip model (random weights) equals open_clip's own."""

import pytest
import torch

from clipl.data.config import ShapesConfig
from clipl.data.transforms import normalize
from clipl.eval.config import EvalConfig
from clipl.eval.datasets import EvalImageDataset, loader
from clipl.eval.runner import eval_mode, model_encoders, run_zero_shot
from clipl.eval.specs import resolve

open_clip = pytest.importorskip("open_clip")
torch.set_num_threads(1)


def _tiny_pair():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from clipl.models import preset
    from clipl.models.clip import CLIPModel

    cfg = preset("tiny_vit")
    v, t = cfg.image, cfg.text
    torch.manual_seed(0)
    ref = CLIP(
        embed_dim=cfg.embed_dim,
        vision_cfg=CLIPVisionCfg(layers=v.layers, width=v.width, head_width=v.width // v.heads,
                                 patch_size=v.patch_size, image_size=v.image_size),
        text_cfg=CLIPTextCfg(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                             heads=t.heads, layers=t.layers),
        quick_gelu=True,
    ).eval()
    ours = CLIPModel.from_config(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)  # same (OpenAI) layout: no renaming
    return ref, ours


def test_zero_shot_equals_open_clip_build_zero_shot_classifier(tmp_path):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    shapes = ShapesConfig(train_size=8, val_size=8, eval_size=48, samples_per_shard=24,
                          cache_dir=str(tmp_path), num_procs=1)
    s = resolve("shapes:shape", "zeroshot", shapes)[0]
    cfg = EvalConfig(batch_size=16, num_workers=0, templates="openai7")
    templates = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                 "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
    ref, ours = _tiny_pair()

    ctx = ours.context_length
    with torch.no_grad():
        w_ref = build_zero_shot_classifier(ref, lambda x: open_clip.tokenize(x, context_length=ctx),
                                           s.classnames, templates, num_classes_per_batch=3)
        images, labels = [], []
        for b in loader(EvalImageDataset(s, ours.image_size), 16, 0):
            images.append(b["image"])
            labels.append(b["label"])
        images, labels = torch.cat(images), torch.cat(labels)
        logits_ref = ref.encode_image(normalize(images), normalize=True) @ w_ref
        acc_ref = (logits_ref.argmax(1) == labels).double().mean().item()

    enc = model_encoders(ours, "cpu")
    with eval_mode(ours):
        res = run_zero_shot(enc, s, cfg)
    torch.testing.assert_close(res.weights, w_ref.T, atol=2e-5, rtol=1e-4)
    top2 = logits_ref.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4  # no near-tie that rounding could flip
    assert res.metrics["acc1"] == pytest.approx(acc_ref, abs=1e-12)
    # Top-5 against open_clip's logits as well.
    acc5_ref = (logits_ref.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean().item()
    assert res.metrics["acc5"] == pytest.approx(acc5_ref, abs=1e-12)
