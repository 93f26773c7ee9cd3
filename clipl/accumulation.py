"""One optimiser step's forward/backward over k micro-batches, with the loss over all of them.

Contrastive accumulation (GradCache, Gao et al. 2021; open_clip's ``--accum-freq``): the loss of a
CLIP step couples every pair of the batch, so the batch cannot be split into independent losses
without losing negatives. Instead, for micro-batches x_1..x_k (features f_i = F(x_i; theta)):

1. no-grad pass: f_i for every i (activations freed at once), remembering each micro-batch's RNG
   state so that dropout / patch dropout draw the same masks when it is encoded again;
2. L = loss(f_1..f_k) on leaf copies of the features: g_i = dL/df_i (and dL/d logit_scale, bias);
3. for each i: restore its RNG state, f_i = F(x_i; theta) with autograd, backward of <f_i, g_i>,
   which adds the micro-batch's exact share (df_i/dtheta)^T g_i to the parameter gradients.

Sum over i = dL/dtheta, exactly the whole-batch gradient, with one micro-batch of activations alive
at a time and one extra forward per micro-batch. With k = 1 the features keep their graph and the
same two-stage backward costs nothing extra (and is the same arithmetic as ``loss.backward()``).

Under torch.distributed the objective gathers every rank's features (clipl.objectives), so the
global batch is k x micro x world pairs; the gradient conventions stay those of the objectives.

Non-finite steps are decided on the device: ``finite`` is a 0-dim tensor (all ranks agree through one
tiny all-reduce, never read by the host here) and ``mask`` says what the backward carries on a
non-finite step: the true gradients ("none", the optimiser skips by itself), NaN everywhere ("nan":
DeepSpeed and fp16 loss scaling discard a step whose gradients are not finite) or zeros ("zero").

BatchNorm normalises over what one forward sees (one micro-batch, as one device under DDP); its
running statistics are updated once per micro-batch, by the no-grad pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from clipl.models.layers import _batchnorms, _keep_bn_stats
from clipl.ranks import is_distributed

MASKS = ("none", "nan", "zero")

Encode = Callable[[Any], Any]
"""micro-batch -> CLIPOutput-like (image_features, text_features, logit_scale, logit_bias)."""
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
"""(image_features, text_features, logit_scale, logit_bias) -> this rank's scalar loss."""
Backward = Callable[[torch.Tensor, bool], None]
"""(scalar, is_last_backward_of_the_step) -> None: backpropagates (DDP/DeepSpeed sync on the last)."""


@dataclass
class StepOutput:
    """What one optimiser step's forward/backward leaves for the optimiser step and the metrics."""

    loss: torch.Tensor
    """This rank's loss, detached fp32 (its rows of the whole contrastive batch; mean over ranks = global)."""
    finite: torch.Tensor
    """0-dim bool on the device: the loss was finite on every rank (the step may be taken)."""
    image_features: torch.Tensor
    """This rank's normalised image features of the whole step, detached (metrics only)."""
    text_features: torch.Tensor
    """This rank's normalised text features of the whole step, detached (metrics only)."""
    logit_scale: torch.Tensor
    """The raw (log) temperature parameter's value, detached."""
    logit_bias: Optional[torch.Tensor]
    """The logit bias's value, detached (None without one)."""


def all_finite(loss: torch.Tensor) -> torch.Tensor:
    """0-dim bool on ``loss``'s device: finite on every rank (a 1-element all-reduce, no host read)."""
    flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if is_distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag[0] > 0


def _masked(grad: torch.Tensor, finite: torch.Tensor, mask: str) -> torch.Tensor:
    if mask == "nan":
        # where(), not a product: an inf or NaN gradient times 1 stays what it is either way, and
        # a finite step's gradient must pass bit for bit.
        return torch.where(finite, grad, torch.full_like(grad, float("nan")))
    if mask == "zero":
        return torch.where(finite, grad, torch.zeros_like(grad))
    return grad


class _RNG:
    """The default generators of the CPU and of ``device`` (what dropout and patch dropout draw from)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.index = device.index if device.index is not None else (torch.cuda.current_device() if self.cuda else 0)

    def get(self) -> tuple:
        # Host-side copies of the generator's seed and offset: no device synchronisation.
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.index) if self.cuda else None

    def set(self, state: tuple) -> None:
        torch.set_rng_state(state[0])
        if self.cuda:
            torch.cuda.set_rng_state(state[1], self.index)


@contextlib.contextmanager
def _bn_updated_once(model: torch.nn.Module) -> Iterator[None]:
    """Keep BatchNorm running statistics as the no-grad pass left them (its update is the one that counts)."""
    bns = _batchnorms([model])
    with _keep_bn_stats(bns) if bns else contextlib.nullcontext():
        yield


def _loss_grads(
    objective: Objective, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: Optional[torch.Tensor]
) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
    """The loss on leaf copies of its inputs and its gradients w.r.t. (image, text, scale, bias).

    Leaves, not the parameters themselves: ``torch.autograd.grad`` then touches no ``.grad`` and fires
    no accumulation hook of DDP/DeepSpeed, and a temperature that came out of a no-grad forward (which
    ZeRO-3 hands back detached) still gets its gradient. The parameters receive their gradients from
    the micro-batches' backward calls only (:func:`_surrogate`).
    """
    leaves = [t.detach().float().requires_grad_() if t is not None else None for t in (image, text, scale, bias)]
    with torch.enable_grad():
        loss = objective(*leaves)
        wrt = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(loss, wrt, allow_unused=True))
    return loss, [next(grads) if t is not None else None for t in leaves]


def _surrogate(out: Any, grads: Sequence[Optional[torch.Tensor]], with_temperature: bool) -> torch.Tensor:
    """<f, g> summed over both towers (and <p, dL/dp> for scale/bias): its gradient is the loss's.

    ``out`` comes from a grad-mode forward; ``grads`` are (image, text, scale, bias) gradients of the
    loss for its rows. Frozen towers or temperatures (optim.lock_*) have nothing to backpropagate.
    """
    tensors = (out.image_features, out.text_features, out.logit_scale, out.logit_bias)
    terms = [(t.float() * g).sum() for i, (t, g) in enumerate(zip(tensors, grads))
             if g is not None and t is not None and t.requires_grad and (i < 2 or with_temperature)]
    if not terms:
        raise RuntimeError("nothing to train: every tower and the temperature are locked (optim.lock_*)")
    return torch.stack(terms).sum() if len(terms) > 1 else terms[0]


def contrastive_step(
    encode: Encode,
    objective: Objective,
    micro_batches: Sequence[Any],
    backward: Backward,
    *,
    model: torch.nn.Module,
    device: torch.device,
    mask: str = "none",
) -> StepOutput:
    """Forward and backward of one optimiser step whose loss covers every micro-batch (module docstring).

    ``model`` is what ``encode`` runs (for its BatchNorm statistics); ``device`` holds its generators.
    """
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    k = len(micro_batches)
    if k == 1:
        out = encode(micro_batches[0])
        images, texts = out.image_features, out.text_features
        outs = [out]
    else:
        rng = _RNG(device)
        states, image_parts, text_parts = [], [], []
        with torch.no_grad():
            for micro in micro_batches:
                states.append(rng.get())
                out = encode(micro)
                image_parts.append(out.image_features.float())
                text_parts.append(out.text_features.float())
        after = rng.get()
        images, texts = torch.cat(image_parts), torch.cat(text_parts)
        outs = None
    scale, bias = out.logit_scale, out.logit_bias
    loss, grads = _loss_grads(objective, images, texts, scale, bias)
    finite = all_finite(loss)
    grads = [_masked(g, finite, mask) if g is not None else None for g in grads]

    if k == 1:
        backward(_surrogate(outs[0], grads, with_temperature=True), True)
    else:
        sizes = [len_of(m) for m in micro_batches]
        offsets = [sum(sizes[:i]) for i in range(k)]
        with _bn_updated_once(model):
            for i, micro in enumerate(micro_batches):
                rng.set(states[i])
                out = encode(micro)
                rows = slice(offsets[i], offsets[i] + sizes[i])
                # The temperature's gradient is added once, with the last micro-batch; the others add
                # exact zeros to it. Every backward reaches every trainable parameter: DDP's reducer
                # waits for all of them in the backward it reduces (the last), and ZeRO-3 copies a
                # parameter's first gradient of a step into its partition, adding the later ones.
                temperature = [g if i == k - 1 or g is None else torch.zeros_like(g) for g in grads[2:]]
                surrogate = _surrogate(out, [g[rows] if g is not None else None for g in grads[:2]] + temperature,
                                       with_temperature=True)
                del out
                backward(surrogate, i == k - 1)
        rng.set(after)
    return StepOutput(
        loss=loss.detach(),
        finite=finite,
        image_features=images.detach(),
        text_features=texts.detach(),
        logit_scale=scale.detach(),
        logit_bias=bias.detach() if bias is not None else None,
    )


def plain_step(
    encode: Encode,
    objective: Objective,
    micro_batches: Sequence[Any],
    backward: Backward,
    *,
    mask: str = "none",
) -> StepOutput:
    """Plain gradient accumulation: each micro-batch's own loss (micro x world pairs), gradients averaged.

    The loss returned is the mean of the micro-batch losses; ``finite`` holds when every one was.
    """
    k = len(micro_batches)
    losses, finites, image_parts, text_parts = [], [], [], []
    for i, micro in enumerate(micro_batches):
        out = encode(micro)
        loss, grads = _loss_grads(objective, out.image_features, out.text_features, out.logit_scale, out.logit_bias)
        finite = all_finite(loss)
        grads = [_masked(g / k, finite, mask) if g is not None else None for g in grads]
        backward(_surrogate(out, grads, with_temperature=True), i == k - 1)
        losses.append(loss.detach())
        finites.append(finite)
        image_parts.append(out.image_features.detach().float())
        text_parts.append(out.text_features.detach().float())
    return StepOutput(
        loss=torch.stack(losses).mean(),
        finite=torch.stack(finites).all(),
        image_features=torch.cat(image_parts),
        text_features=torch.cat(text_parts),
        logit_scale=out.logit_scale.detach(),
        logit_bias=out.logit_bias.detach() if out.logit_bias is not None else None,
    )


def len_of(micro: Any) -> int:
    """Samples in a micro-batch: a dict with ``text`` or a tuple whose last item is the tokens."""
    tokens = micro["text"] if isinstance(micro, dict) else micro[-1]
    return int(tokens.shape[0])


def split_batch(batch: dict, accumulation: int, micro_batch_size: Optional[int]) -> list[dict]:
    """``accumulation`` micro-batches of the tensors ``image`` and ``text`` of one loader batch.

    ``micro_batch_size`` None: the batch is one micro-batch whatever its size. Otherwise the batch must
    hold exactly accumulation x micro_batch_size samples (what the batch plan had the loader yield).
    """
    n = int(batch["text"].shape[0])
    if micro_batch_size is None:
        return [{"image": batch["image"], "text": batch["text"]}]
    want = accumulation * micro_batch_size
    if n != want:
        raise ValueError(
            f"the training loader yielded a batch of {n} samples, but the batch plan expects "
            f"{want} per device per optimiser step (trainer.micro_batch_size={micro_batch_size} x "
            f"{accumulation} accumulation step(s)); a custom datamodule must yield plan.per_device_batch_size "
            "samples per batch (and drop the last incomplete one)"
        )
    return [
        {"image": batch["image"][i * micro_batch_size:(i + 1) * micro_batch_size],
         "text": batch["text"][i * micro_batch_size:(i + 1) * micro_batch_size]}
        for i in range(accumulation)
    ]
