"""run(recipe): the one orchestrator. recipe -> config -> module + data -> Trainer -> fit.

A recipe is a Python file with ``config() -> RunConfig`` and, optionally, ``callbacks(cfg) ->
list[Callback]`` for anything beyond the built-in checkpointing, throughput and evaluation callbacks,
and ``datamodule(cfg, plan) -> LightningDataModule`` to replace clipl's data pipeline with one of its
own (its loader yields ``plan.per_device_batch_size`` samples per rank per optimiser step).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import inspect
import logging
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from clipl.config.io import load_config, save_config, to_container
from clipl.config.parse import ConfigError, parse, removed_keyword_error
from clipl.distributed.plan import BatchPlan, plan_for

log = logging.getLogger(__name__)
SIGTERM_EXIT = 143  # 128 + SIGTERM, what a shell reports for a job stopped by SIGTERM


def shipped_recipes() -> dict[str, Path]:
    """The recipes installed with clipl, by name (file stem)."""
    root = importlib.resources.files("clipl._recipes")
    return {
        p.name[:-3]: Path(str(p))
        for p in root.iterdir()
        if p.name.endswith(".py") and not p.name.startswith("_")
    }


def recipe_path(recipe: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (``rn50x4``)."""
    path = Path(recipe)
    if path.suffix == ".py" and path.is_file():
        return path
    shipped = shipped_recipes()
    if str(recipe) in shipped:
        return shipped[str(recipe)]
    if path.suffix == ".py" and path.name[:-3] in shipped and not path.exists():
        return shipped[path.name[:-3]]
    raise ConfigError(
        f"recipe {str(recipe)!r} not found: give a recipe file or one of {', '.join(sorted(shipped))}"
    )


def load_recipe(recipe: str | Path) -> ModuleType:
    """Import a recipe file as a module (recipes are files, not a package)."""
    path = recipe_path(recipe)
    spec = importlib.util.spec_from_file_location(f"clipl_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "config", None)):
        raise ConfigError(f"recipe {path} has no config() function returning a RunConfig")
    return module


def recipe_config(module: ModuleType, recipe: str | Path) -> Any:
    """The recipe's ``config()``; a removed field passed as a keyword gets its replacement named, and a
    value a config dataclass refuses (ValueError) is a ConfigError (exit 2, one line)."""
    try:
        return module.config()
    except TypeError as e:
        removed = removed_keyword_error(e)
        if removed is None:
            raise
        raise ConfigError(f"recipe {recipe_path(recipe)}: {removed}") from None
    except ValueError as e:  # a config dataclass's own validation (__post_init__): a field the user must fix
        raise ConfigError(f"recipe {recipe_path(recipe)}: {str(e).splitlines()[0]}") from None


def resolve(recipe: str | Path, overrides: list[str] | None = None) -> tuple[ModuleType, Any]:
    """The recipe module and its validated config with ``overrides`` applied."""
    module = load_recipe(recipe)
    return module, parse(recipe_config(module, recipe), overrides)  # sections validate themselves


def resolve_batch_plan(trainer: Any) -> BatchPlan:
    """The run's batch plan from its TrainerConfig and world; an impossible one is a ConfigError."""
    try:
        return plan_for(trainer)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def build_datamodule(module: ModuleType, cfg: Any, plan: BatchPlan) -> Any:
    """The run's data: the recipe's own ``datamodule(cfg, plan)``, else clipl's CLIPDataModule, whose
    training loader yields ``plan.per_device_batch_size`` samples per rank per optimiser step."""
    from clipl.data.datamodule import CLIPDataModule

    if callable(getattr(module, "datamodule", None)):
        return _recipe_datamodule(module, cfg, plan)
    return CLIPDataModule(
        cfg.data,
        image_size=cfg.model.image.image_size,
        context_length=cfg.model.text.context_length,
        seed=cfg.seed,
        batch_size=plan.per_device_batch_size,  # one optimiser step's samples on this rank
        val_batch_size=plan.micro_batch_size,  # validation does not accumulate: one forward's worth
    )


def _recipe_datamodule(module: ModuleType, cfg: Any, plan: BatchPlan) -> Any:
    params = inspect.signature(module.datamodule).parameters
    if len(params) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params.values()):
        raise ConfigError(
            f"recipe {module.__file__}: datamodule(cfg) must take (cfg, plan) and yield plan.per_device_batch_size "
            "samples per rank per step (data.batch_size was removed; see docs/recipes.md)"
        )
    return module.datamodule(cfg, plan)


def _resume_from(cfg: Any, out_dir: Path) -> str | None:
    from clipl.training.checkpointing import checkpoint_dir, find_resume_checkpoint

    mode = cfg.checkpoint.resume
    if mode not in ("auto", "never"):
        if not Path(mode).exists():
            raise ConfigError(f"checkpoint.resume={mode}: no such checkpoint")
        check_zero_world_size(mode, cfg)
        return mode
    found = find_resume_checkpoint(out_dir)
    if found is not None and mode == "never":
        raise ConfigError(
            f"{checkpoint_dir(out_dir)} already holds checkpoints and checkpoint.resume=never: "
            "choose another out_dir, or resume with checkpoint.resume=auto"
        )
    if found is not None:
        _check_compatible(cfg, out_dir)
    if found is not None:
        check_zero_world_size(found, cfg)
    return str(found) if found else None


def check_zero_world_size(path: str | Path, cfg: Any) -> None:
    """A DeepSpeed ZeRO checkpoint holds one optimizer shard per data-parallel rank and loads only on the
    world size that wrote it; say how to go on from it with another world size."""
    from clipl.distributed.world import world_size

    path = Path(path)
    if not path.is_dir():
        return  # a single-file checkpoint (DDP/single device): full optimizer state, any world size
    shards = {p.name.split("_mp_rank")[0] for p in path.glob("**/*zero_pp_rank_*_optim_states.pt")}
    now = world_size(cfg.trainer)
    if shards and len(shards) != now:
        raise ConfigError(
            f"{path} is a DeepSpeed ZeRO checkpoint written by {len(shards)} ranks and this run has {now}: its "
            "optimizer state is sharded per rank. Keep the world size for this resume, or convert it to "
            f"weights only (`clipl convert {path} weights.ckpt`) and start a new run from them (the optimizer "
            "state is then lost); DeepSpeed's universal checkpoints (deepspeed.checkpoint.ds_to_universal) "
            "can re-shard it, but clipl does not load them yet")


def _check_compatible(cfg: Any, out_dir: Path) -> None:
    """Refuse to resume a run whose model or objective differs from the one that wrote the run."""
    path = out_dir / "config.yaml"
    if not path.is_file() or cfg.checkpoint.allow_config_change:
        return
    saved, now = to_container(load_config(path)), to_container(cfg)
    changed = [k for k in ("model", "objective") if saved[k] != now[k]]
    if changed:
        raise ConfigError(
            f"{out_dir} holds a run with a different {' and '.join(changed)} config than this one "
            f"(see {path}); use another out_dir, or resume anyway with checkpoint.allow_config_change=true"
        )


def _write_config(cfg: Any, out_dir: Path) -> None:
    """config.yaml of the run; an earlier, different one is kept as config.<time>.yaml."""
    path = out_dir / "config.yaml"
    if path.is_file():
        try:
            same = to_container(load_config(path)) == to_container(cfg)
        except Exception:  # an unreadable earlier config is kept aside all the same
            same = False
        if same:
            return
        kept = path.with_name(f"config.{time.strftime('%Y%m%d-%H%M%S')}.yaml")
        path.rename(kept)
        log.warning("the run's config changed; the previous one is kept as %s", kept)
    save_config(cfg, path)


def run(recipe: str | Path, overrides: list[str] | None = None) -> int:
    """Train with ``recipe``; returns the process exit code (0, or 143 after a SIGTERM save)."""
    from clipl.config.validate import validate

    module, cfg = resolve(recipe, overrides)
    plan = resolve_batch_plan(cfg.trainer)  # once, before anything is built; everything below is handed it
    # Fail fast: data paths, eval sets, devices, precision, checkpoints and out_dir are checked before
    # Lightning or the model are even imported; every problem is reported at once.
    validate(cfg, own_data=callable(getattr(module, "datamodule", None)))

    from clipl.quiet import install as quiet_install

    quiet_install()  # before Lightning is imported: some of its messages come at import or Trainer() time
    import lightning as L
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from clipl.callbacks import build_eval_callbacks
    from clipl.data.wds_format import Members
    from clipl.callbacks.throughput import PerfMonitor
    from clipl.distributed.world import uses_cuda
    from clipl.module import CLIPModule
    from clipl.training.checkpointing import checkpoint_callbacks, checkpoint_io
    from clipl.training.progress import progress_bar
    from clipl.training.slurm import SlurmRequeue
    from clipl.training.summary import RunSummary
    from clipl.training.tracking import build_loggers
    from clipl.training.trainer import build_trainer

    out_dir = Path(cfg.out_dir)
    summary = RunSummary(out_dir)
    ckpt_path = _resume_from(cfg, out_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    system = CLIPModule(cfg, plan=plan)  # splits each loader batch into the plan's micro-batches
    data = build_datamodule(module, cfg, plan)
    saving = checkpoint_callbacks(cfg.checkpoint, out_dir)
    io = checkpoint_io(cfg.checkpoint, out_dir, saving, deepspeed=cfg.trainer.strategy == "deepspeed",
                       on_gpu=uses_cuda(cfg.trainer))
    callbacks = saving + [PerfMonitor.from_config(cfg, plan)]
    callbacks += build_eval_callbacks(cfg.eval, str(out_dir), shapes=cfg.data.shapes, members=Members.of(cfg.data))
    if callable(getattr(module, "callbacks", None)):
        callbacks += list(module.callbacks(cfg))
    requeue = SlurmRequeue()  # SLURM's requeue signal: checkpoint at a step boundary, requeue, exit 143
    callbacks += [requeue, summary]
    if cfg.trainer.enable_progress_bar and not any(isinstance(cb, ProgressBar) for cb in callbacks):
        callbacks.append(progress_bar())  # short metric names (a recipe's own bar is kept instead)
    loggers = build_loggers(cfg.logging, out_dir, to_container(cfg))
    for logger in loggers:  # next to the config in every backend's hyperparameters (hparams.yaml, W&B)
        logger.log_hyperparams({"batch_plan": plan.to_dict()})
    trainer = build_trainer(
        cfg.trainer,
        plan=plan,
        out_dir=str(out_dir),
        callbacks=callbacks,
        loggers=loggers,
        # DeepSpeed writes its own checkpoint folders; everything else goes through atomic renames.
        plugins=None if io is None else [io],
    )
    if trainer.is_global_zero:
        print(plan.describe(), flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_config(cfg, out_dir)
        if ckpt_path:
            log.info("resuming from %s", ckpt_path)
    status = None  # what the summary says; None (a crash): no summary, the traceback says it
    stopped = "stopped by SIGTERM: checkpoint saved, the same command resumes"
    try:
        trainer.fit(system, datamodule=data, ckpt_path=ckpt_path)
        if requeue.saved is not None:
            status = f"stopped by SLURM's requeue signal: {requeue.saved} saved, " + (
                "job requeued" if requeue.requeued else "requeue failed: resubmit the same command")
            return SIGTERM_EXIT
        status = stopped if trainer.received_sigterm else "finished"
    except SIGTERMException:
        status = stopped
        return SIGTERM_EXIT
    except SystemExit:  # Lightning turns Ctrl-C into sys.exit(1) after its graceful shutdown
        status = "interrupted (Ctrl-C); the same command resumes from the newest checkpoint"
        raise
    finally:
        if hasattr(io, "wait"):
            io.wait()  # every checkpoint write is on disk before the process exits (Lightning waits too)
        if status is not None and trainer.is_global_zero:
            print(summary.render(status), flush=True)
    return SIGTERM_EXIT if trainer.received_sigterm else 0
