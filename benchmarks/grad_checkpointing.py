"""Saved-activation bytes per sample with and without activation checkpointing, clipl vs open_clip.

open_clip's ModifiedResNet.set_grad_checkpointing is a no-op; clipl checkpoints the stem, every
Bottleneck and the attention pool. Measured with torch.autograd.graph.saved_tensors_hooks (distinct
non-parameter storages saved for backward), fp32 on CPU, batch 1.

    python benchmarks/grad_checkpointing.py rn50 vit_b32
"""

from __future__ import annotations

import sys

import torch

from clipl.models import build_model

OPENCLIP_NAMES = {"rn50": "RN50", "rn50x4": "RN50x4", "vit_b32": "ViT-B-32", "vit_b16": "ViT-B-16"}


def saved_mib(model, images) -> float:
    """MiB of activations (distinct non-parameter storages) autograd saves for backward."""
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.encode_image(images).sum().backward()
    return sum(storages.values()) / 2**20


def main(names: list[str]) -> None:
    import open_clip

    torch.set_num_threads(1)
    print("| preset | clipl off | clipl on | open_clip off | open_clip on |")
    print("|---|---|---|---|---|")
    for name in names:
        row = []
        ours = build_model(name).train()
        ref = open_clip.create_model(OPENCLIP_NAMES[name], pretrained=None, force_quick_gelu=True).train()
        images = torch.randn(1, 3, ours.image_size, ours.image_size)
        for model in (ours, ref):
            for enable in (False, True):
                model.set_grad_checkpointing(enable)
                row.append(f"{saved_mib(model, images):.1f} MiB")
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["rn50", "vit_b32"])
