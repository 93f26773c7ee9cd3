"""Image-text retrieval recall@K with several captions per image, computed in blocks.

Definitions follow clip_benchmark: `image_retrieval_recall@K` is text -> image (the caption's
image is among the K best images), `text_retrieval_recall@K` is image -> text (at least one of
the image's captions is among the K best texts). Ties are resolved in favour of the positive:
a query is a hit when fewer than K negatives score strictly higher than its best positive, a rule
independent of sample order and therefore of sharding.

Memory: only a (chunk_size x N) block of similarities exists at any time, never N_text x N_image.
"""

from __future__ import annotations

from typing import Sequence

import torch

from clipl.eval.dist import all_reduce_sum, gather_sorted
from clipl.ranks import rank_and_world


def _hits(queries: torch.Tensor, keys: torch.Tensor, best_positive, ks: Sequence[int], chunk_size: int, split: bool) -> torch.Tensor:
    """Hit counts (len(ks),) of ``queries`` against ``keys``.

    ``best_positive(lo, hi, sims)`` returns the best positive score of each query row in [lo, hi)
    from that block's own similarities, so the comparison below is against bit-identical numbers.
    """
    rank, world = rank_and_world() if split else (0, 1)
    kt = torch.tensor(list(ks), device=queries.device)
    hits = torch.zeros(len(ks), dtype=torch.long, device=queries.device)
    n_chunks = (queries.shape[0] + chunk_size - 1) // chunk_size
    # Chunk c goes to rank c % world: the chunk boundaries, hence every matmul, are the same for
    # any number of processes.
    for c in range(rank, n_chunks, world):
        lo, hi = c * chunk_size, min((c + 1) * chunk_size, queries.shape[0])
        sims = queries[lo:hi].float() @ keys.float().T
        best = best_positive(lo, hi, sims)
        # No positive exceeds the best positive, so this counts negatives only; peak memory is
        # the block (4 bytes per score) plus one bool mask.
        n_better = (sims > best[:, None]).sum(dim=1)
        hits += (n_better[:, None] < kt[None, :]).sum(dim=0)
        del sims  # freed before the next block is allocated: one block alive at a time
    return all_reduce_sum(hits) if split and world > 1 else hits


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    split_across_ranks: bool = True,
) -> dict[str, float]:
    """Recall@K both ways for (N_img, D) and (N_txt, D) features; ``text_to_image[t]`` is t's image.

    Under torch.distributed with ``split_across_ranks`` every rank must pass the same (gathered)
    features: the query blocks are shared out over ranks and the hit counts summed.
    """
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    text_to_image = text_to_image.to(image_features.device).long()
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},), got {tuple(text_to_image.shape)}")
    if n_txt and (text_to_image.min() < 0 or text_to_image.max() >= n_img):
        raise ValueError(f"text_to_image must index the {n_img} images")
    if n_img == 0 or n_txt == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    if torch.bincount(text_to_image, minlength=n_img).min() == 0:
        raise ValueError("every image needs at least one caption for image->text retrieval")

    def caption_image(lo, hi, sims):  # text -> image: each caption has one image
        return sims.gather(1, text_to_image[lo:hi, None]).squeeze(1)

    def best_caption(lo, hi, sims):  # image -> text: the best of the image's captions
        mine = ((text_to_image >= lo) & (text_to_image < hi)).nonzero().squeeze(1)
        row = text_to_image[mine] - lo
        best = sims.new_full((hi - lo,), float("-inf"))
        return best.scatter_reduce(0, row, sims[row, mine], reduce="amax")

    t2i = _hits(text_features, image_features, caption_image, ks, chunk_size, split_across_ranks)
    i2t = _hits(image_features, text_features, best_caption, ks, chunk_size, split_across_ranks)
    out = {}
    for j, k in enumerate(ks):
        out[f"image_retrieval_recall@{k}"] = float(t2i[j]) / n_txt
        out[f"text_retrieval_recall@{k}"] = float(i2t[j]) / n_img
    return out


def gather_retrieval_features(
    image_index: torch.Tensor,
    image_features: torch.Tensor,
    text_image_index: torch.Tensor,
    text_slot: torch.Tensor,
    text_features: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather every rank's shard into (image_features, text_features, text_to_image), sorted.

    ``image_index``/``text_image_index`` are global sample indices of the images (and of each
    caption's image), ``text_slot`` the caption's position among its image's captions; sorting by
    them makes the result identical for any sharding.
    """
    img_idx, img_feats = gather_sorted(image_index.long(), image_features)
    # key = image index * (max slot + 1) + slot: captions sorted by image, then by slot.
    # The sum over ranks of the local max slots bounds every slot; all ranks join the reduction.
    local_max = text_slot.max().view(1) if text_slot.numel() else text_slot.new_zeros(1)
    span = int(all_reduce_sum(local_max.long().clamp(min=0)).item()) + 1
    key = text_image_index.long() * span + text_slot.long()
    _, txt_img, txt_feats = gather_sorted(key, text_image_index.long(), text_features)
    text_to_image = torch.searchsorted(img_idx, txt_img)
    found = img_idx[text_to_image.clamp(max=img_idx.numel() - 1)] if img_idx.numel() else txt_img - 1
    if (text_to_image >= img_idx.numel()).any() or (found != txt_img).any():
        raise ValueError("a caption refers to an image index that no rank holds")
    return img_feats, txt_feats, text_to_image


@torch.no_grad()
def top_texts(image_features: torch.Tensor, text_features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Indices (N_img, k) of each image's k best captions (for example panels; small N_img)."""
    sims = image_features.float() @ text_features.float().T
    return sims.topk(min(k, text_features.shape[0]), dim=1).indices
