"""`clipl eval CHECKPOINT ...`: the training-time evaluations on a saved model, as a table and JSON.

CHECKPOINT is a clipl Lightning checkpoint or ZeRO folder (model architecture, shapes set and
evaluation settings come from its saved config), a `clipl export` output, an open_clip folder
(``local-dir:`` accepted), a Hugging Face CLIPModel folder, or a bare OpenAI-layout state dict with
``--model`` (a clipl preset or an open_clip model name: shapes cannot tell GELU from QuickGELU).
Under torchrun the data is sharded over the processes exactly as during training. The JSON names
the architecture as ``model`` and the checkpoint (with its step) as ``pretrained``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch

from clipl.data.config import DataConfig
from clipl.data.wds_format import Members
from clipl.eval.config import EvalConfig
from clipl.eval.results import checkpoint_name, format_table, write_result
from clipl.models.metadata import architecture_name
from clipl.eval.runner import eval_mode, model_encoders, run_linear_probe, run_retrieval, run_zero_shot
from clipl.eval.specs import resolve, resolve_probe
from clipl.ranks import initialized, is_rank_zero, launcher_env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipl eval", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="clipl .ckpt / ZeRO folder, clipl export, open_clip or HF folder, or state dict")
    p.add_argument("--model", help="clipl preset or open_clip model name (needed for a bare state dict; default: "
                                   "the architecture recorded with the weights)")
    p.add_argument("--zeroshot", action="append", metavar="DIR|SHARDS|shapes[:split]",
                   help="zero-shot set (repeatable); a clip_benchmark WebDataset folder (DIR/test/*.tar, "
                        "classnames.txt and zeroshot_classification_templates.txt at DIR) works as is")
    p.add_argument("--retrieval", action="append", metavar="SHARDS|shapes[:split]", help="retrieval set (repeatable)")
    p.add_argument("--linear-probe", action="append", metavar="DIR|SHARDS|shapes[:split]", help="linear-probe set (repeatable)")
    p.add_argument("--out", help="folder for the clip_benchmark JSON files (none written if omitted)")
    p.add_argument("--templates", help="builtin template set (openai, openai7, shapes, plain, photo) or a file")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--max-samples", type=int)
    p.add_argument("--linear-probe-position", choices=["after", "before"])
    p.add_argument("--image-key", help="WebDataset sets: image member extension(s), ';'-separated (default: the "
                                       "run's data.image_key, else jpg;png;jpeg;webp)")
    p.add_argument("--caption-key", help="WebDataset sets: caption member, 'ext' or 'ext:json_field' (default: the "
                                         "run's data.caption_key, else txt)")
    p.add_argument("--trust-torchscript", action="store_true",
                   help="allow loading an OpenAI TorchScript archive (it can run code: only trusted files)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=["32-true", "bf16-mixed", "16-mixed"], default="32-true",
                   help="autocast for the forwards (match the training run to reproduce its numbers)")
    return p


def load_for_eval(
    path: str, preset: Optional[str] = None, trust_torchscript: bool = False
) -> tuple[torch.nn.Module, Any, Optional[int]]:
    """(CLIPModel, the run's RunConfig or None, global step or None) from any weights source.

    A clipl Lightning checkpoint (or ZeRO folder) carries its config; exports, open_clip and
    Hugging Face folders carry their architecture; a bare state dict needs ``preset`` (a clipl
    preset or an open_clip model name), see clipl.models.weights.load_model.
    """
    from clipl.config.io import run_config_from
    from clipl.models.weights import load_checkpoint

    p = Path(path[len("local-dir:"):] if path.startswith("local-dir:") else path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    model, src = load_checkpoint(path, model=preset, trust_torchscript=trust_torchscript)
    run_cfg = run_config_from(src.saved_config)
    if run_cfg is not None and run_cfg.trainer.channels_last:
        # The run's evaluation callbacks saw channels_last convolutions, whose float rounding
        # differs; the same layout reproduces their numbers exactly (a linear probe's penalty
        # search can otherwise flip on a near tie). torch.compile is not applied here.
        model = model.to_channels_last()
    return model, run_cfg, src.step


def _eval_config(args: argparse.Namespace, run_cfg: Any) -> EvalConfig:
    base = getattr(run_cfg, "eval", None) or EvalConfig()
    changes: dict[str, Any] = {}
    if args.zeroshot or args.retrieval or args.linear_probe:
        changes.update(zeroshot=args.zeroshot or [], retrieval=args.retrieval or [],
                       linear_probe=args.linear_probe or [])
    for field in ("templates", "batch_size", "num_workers", "max_samples", "linear_probe_position"):
        if getattr(args, field) is not None:
            changes[field] = getattr(args, field)
    cfg = dataclasses.replace(base, **changes)
    if not (cfg.zeroshot or cfg.retrieval or cfg.linear_probe):
        raise ValueError("nothing to evaluate: pass --zeroshot, --retrieval or --linear-probe "
                         "(or a checkpoint whose config lists eval sets)")
    return cfg


def _members(args: argparse.Namespace, run_cfg: Any) -> Members:
    """WebDataset member rules: the flags, else the run's data.image_key/caption_key, else the defaults."""
    data = getattr(run_cfg, "data", None) or DataConfig()
    return Members.from_keys(args.image_key or data.image_key, args.caption_key or data.caption_key)


def _init_distributed(device: str) -> None:
    local_rank, world = launcher_env()
    if world > 1 and not initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `clipl eval`; returns the exit code."""
    args = build_parser().parse_args(argv)
    from clipl.config.validate import ConfigProblems, eval_command_problems  # fail fast: before any loading

    problems = eval_command_problems(str(args.checkpoint), {"zeroshot": args.zeroshot, "retrieval": args.retrieval,
                                                            "linear_probe": args.linear_probe}, args.out, args.device)
    if problems:
        raise ConfigProblems(problems)
    _init_distributed(args.device)
    local = launcher_env()[0]
    device = torch.device(f"cuda:{local}") if args.device == "cuda" else torch.device(args.device)
    model, run_cfg, step = load_for_eval(args.checkpoint, args.model, args.trust_torchscript)
    cfg = _eval_config(args, run_cfg)
    shapes = getattr(getattr(run_cfg, "data", None), "shapes", None)
    members = _members(args, run_cfg)
    model = model.to(device)
    if args.precision == "32-true":
        ctx = contextlib.nullcontext
    else:
        dtype = torch.bfloat16 if args.precision.startswith("bf16") else torch.float16
        ctx = lambda: torch.autocast(device.type, dtype=dtype)  # noqa: E731
    enc = model_encoders(model, device, cfg.linear_probe_position, forward_context=ctx)
    rows = []
    with eval_mode(model):
        for spec in cfg.zeroshot:
            for s in resolve(spec, "zeroshot", shapes, members):
                rows.append(("zeroshot", s.name, run_zero_shot(enc, s, cfg).metrics))
        for spec in cfg.retrieval:
            for s in resolve(spec, "retrieval", shapes, members):
                rows.append(("retrieval", s.name, run_retrieval(enc, s, cfg).metrics))
        for spec in cfg.linear_probe:
            for ps in resolve_probe(spec, shapes, cfg.linear_probe_train_fraction, cfg.seed, members):
                res = run_linear_probe(enc, ps, cfg)
                rows.append(("linear_probe", ps.name, {**res.metrics, "weight_decay": res.weight_decay}))
    is_zero = is_rank_zero()
    if is_zero:
        print(format_table(rows))
        if args.out:
            arch = args.model or architecture_name(model.config)
            for task, name, metrics in rows:
                path = write_result(args.out, name, task, metrics, model=arch,
                                    pretrained=checkpoint_name(str(args.checkpoint), step), step=step)
                print(f"wrote {path}")
    return 0
