"""Recipe config + ``key=value`` overrides -> a validated RunConfig.

Overrides are OmegaConf dotlists merged into the structured (typed, strict) config, so an unknown key
or a wrong type fails here, before any model is built. A few keys take a name instead of a value:

    model=vit_b16          the whole model of a preset
    model.image=vit_b16    the image tower of a preset (model.text likewise)
    objective=siglip       a registered objective with its defaults; an objective that names the model
                           init it was designed for (SigLIP: model.init_logit_scale=ln 10,
                           model.init_logit_bias=-10) also sets it on a model left at ModelConfig's
                           defaults, unless the same command line sets either field itself
    data=shapes            the built-in captioned-shapes data set
"""

from __future__ import annotations

import typing
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError
from omegaconf.nodes import LiteralNode

from clipl.registry import did_you_mean, one_of_message


class ConfigError(ValueError):
    """A configuration the user must fix; the CLI prints it and exits with code 2."""


class ConfigProblems(ConfigError):
    """Several problems found together; the CLI prints one ``error:`` line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# Why a mandatory field is needed and how to fill it, shown when a recipe leaves it MISSING.
MISSING_HINTS: dict[str, str] = {
    "data.train": "a training data source: data.train='/data/shards/{00000..01023}.tar' "
    "(WebDataset), data.train=/data/pairs.csv (table), or data=shapes for the built-in set",
    "model.init_from": "the weights to start from: model.init_from=runs/vit_l14/checkpoints/last.ckpt "
    "(a clipl checkpoint, a `clipl export`, an open_clip folder or an OpenAI .pt; docs/weights.md)",
}


# Fields that no longer exist -> what replaces them. An override or a recipe still setting one gets this
# instead of a nearest-key guess (which would point at an unrelated field).
REMOVED_KEYS: dict[str, str] = {
    "data.batch_size": "the batch is planned from trainer.micro_batch_size (samples per device per forward) "
    "and trainer.global_batch_size (samples per optimiser step over all ranks; default micro x devices x nodes)",
    "trainer.accumulate_grad_batches": "accumulation is derived: set trainer.global_batch_size (a multiple of "
    "trainer.micro_batch_size x devices x nodes; the quotient is the accumulation)",
    "objective.init_logit_scale": "the initial temperature is a parameter of the model: set model.init_logit_scale "
    "(objective=siglip sets SigLIP's init on a model left at its defaults)",
    "objective.init_logit_bias": "the initial bias is a parameter of the model: set model.init_logit_bias "
    "(objective=siglip sets SigLIP's init on a model left at its defaults)",
    "logging.every_n_steps": "it was never read; trainer.log_every_n_steps is the one logging interval (the "
    "training metrics, the only steps at which the CLIPModule reads values from the device, and the loggers)",
}


def _removed(key: str) -> ConfigError:
    return ConfigError(f"{key} was removed: {REMOVED_KEYS[key]}")


def _check_removed_attributes(base: Any) -> None:
    """A recipe assigning a removed field on a section (cfg.data.batch_size = 64) sets a stray attribute
    that the structured config would silently drop: refuse it."""
    for key in REMOVED_KEYS:
        section, name = key.rsplit(".", 1)
        obj = base
        for part in section.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and name in getattr(obj, "__dict__", {}):
            raise _removed(key)


def removed_keyword_error(e: TypeError) -> ConfigError | None:
    """The ConfigError for ``SomeConfig(removed_field=...)`` in a recipe, or None for other TypeErrors."""
    for key in REMOVED_KEYS:
        if "unexpected keyword argument" in str(e) and f"'{key.rsplit('.', 1)[1]}'" in str(e):
            return _removed(key)
    return None


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            path = f"{prefix}.{k}" if prefix else str(k)
            keys.append(path)
            child = node._get_node(k)
            keys.extend(_leaf_keys(child, path))
    return keys


def _suggest(key: str, node: DictConfig) -> str:
    return did_you_mean(key, _leaf_keys(node), cutoff=0.6, joiner=" or ")


def _literal_choices(node: DictConfig, key: str) -> tuple | None:
    """The choices of the ``Literal`` field at dotted ``key``, or None for any other field."""
    try:
        for part in key.split("."):
            node = node._get_node(part)
    except (AttributeError, KeyError, OmegaConfBaseException):
        return None
    if not isinstance(node, LiteralNode):
        return None
    # An Optional[Literal[...]] also takes null: listed as clipl.registry.check_literals lists it.
    return typing.get_args(node.ref_type) + ((None,) if node._is_optional() else ())


def _set_model(node: DictConfig, value: str) -> None:
    from clipl.models import preset

    node.model = OmegaConf.structured(preset(value))


def _tower_setter(which: str) -> Callable[[DictConfig, str], None]:
    def setter(node: DictConfig, value: str) -> None:
        from clipl.models import preset

        node.model[which] = OmegaConf.structured(getattr(preset(value), which))

    return setter


def _set_objective(node: DictConfig, value: str) -> None:
    from clipl.objectives import objective_config

    node.objective = OmegaConf.structured(objective_config(value))


def _apply_model_init(node: DictConfig, explicit: set[str]) -> None:
    """After ``objective=NAME``: give the model the init the objective was designed for (its
    ``model_init``, e.g. SigLIP's ln 10 / -10) when the model is at ModelConfig's defaults for both and
    the command line sets neither. The values live on the model only, so nothing is substituted later:
    a model the user did configure is left alone, and RunConfig refuses it if it lacks a needed bias."""
    from clipl.models.config import ModelConfig
    from clipl.objectives.registry import objective_class

    init = getattr(objective_class(node.objective.name), "model_init", None)
    if init is None or any(f"model.{k}" in explicit for k in init):
        return
    if all(node.model[k] == getattr(ModelConfig, k) for k in init):
        for k, v in init.items():
            node.model[k] = v


def _set_data(node: DictConfig, value: str) -> None:
    if value != "shapes":
        raise KeyError(f"data={value}: only data=shapes is a name; set data.train=PATH for other data")
    node.data.train = "shapes"


SHORTCUTS: dict[str, Callable[[DictConfig, str], None]] = {
    "model": _set_model,
    "model.image": _tower_setter("image"),
    "model.text": _tower_setter("text"),
    "objective": _set_objective,
    "data": _set_data,
}


def apply_overrides(node: DictConfig, overrides: list[str]) -> None:
    """Merge ``key=value`` items into the structured ``node`` in order; raises ConfigProblems listing
    every bad item (one line each), not just the first."""
    problems = []
    explicit: set[str] = set()  # keys this command line sets, in order
    for item in overrides:
        if "=" not in item:
            problems.append(f"override {item!r} is not of the form key=value")
            continue
        key, value = item.split("=", 1)
        key = key.strip()
        if key in REMOVED_KEYS:
            raise _removed(key)
        explicit.add(key)
        try:
            if key in SHORTCUTS:
                SHORTCUTS[key](node, value)
            else:
                node.merge_with(OmegaConf.from_dotlist([f"{key}={value}"]))
        except ConfigKeyError:
            problems.append(f"unknown config key {key!r}.{_suggest(key, node)}")
        except KeyError as e:  # unknown preset / objective name
            problems.append(f"{key}={value}: {e.args[0]}")
        except ValidationError as e:
            choices = _literal_choices(node, key)
            if choices is not None:  # a Literal field: the same line as the dataclass's own check
                problems.append(one_of_message(key, value, choices))
            else:
                problems.append(f"{key}={value!r}: wrong type for {key} ({str(e).splitlines()[0]})")
        except OmegaConfBaseException as e:
            problems.append(f"{key}={value!r}: {str(e).splitlines()[0]}")
    if "objective" in explicit and not problems:
        _apply_model_init(node, explicit)
    if problems:
        raise ConfigProblems(problems)


def structured(base: Any, overrides: list[str] | None = None) -> Any:
    """The recipe's config as a strict OmegaConf node with ``overrides`` applied (mandatory fields may
    still be ``???``: :func:`missing_problems` lists them)."""
    _check_removed_attributes(base)
    node = OmegaConf.structured(base)
    OmegaConf.set_struct(node, True)
    apply_overrides(node, list(overrides or []))
    return node


def missing_problems(node: Any) -> list[str]:
    """One line per mandatory field the node leaves unset, with how to fill it."""
    return [f"{k}: missing; {MISSING_HINTS.get(k, 'set it with ' + k + '=VALUE')}"
            for k in sorted(OmegaConf.missing_keys(node))]


def parse(base: Any, overrides: list[str] | None = None) -> Any:
    """The recipe's dataclass config with ``overrides`` applied, validated, as dataclasses again."""
    return to_config(structured(base, overrides))


def to_config(node: Any) -> Any:
    """A :func:`structured` node as validated dataclasses (ConfigProblems for unset mandatory fields)."""
    missing = missing_problems(node)
    if missing:
        raise ConfigProblems(missing)
    try:
        cfg = OmegaConf.to_object(node)  # runs the dataclasses' own validation (__post_init__)
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    problems = tower_problems(getattr(cfg, "model", None))
    if problems:
        raise ConfigProblems(problems)
    return cfg


def tower_problems(model: Any) -> list[str]:
    """One line per tower whose ``arch`` is unknown or names another architecture than its fields.

    ``model.image.arch=vit`` on a ResNet recipe changes the name only: the fields stay a ResNet's, so
    the build would fail deep inside (or, for two configs of the same shape, build the wrong tower).
    """
    from clipl.models.registry import ARCHS, tower_config_class

    problems = []
    for side in ("image", "text"):
        tower = getattr(model, side, None)
        arch = getattr(tower, "arch", None)
        if arch is None:
            continue
        field = f"model.{side}.arch"
        if arch not in ARCHS:
            problems.append(str(ARCHS.unknown(arch, field)).strip("\"'"))
        elif not isinstance(tower, wanted := tower_config_class(arch)):
            problems.append(
                f"{field}={arch}: the {side} tower's other fields are a {type(tower).__name__}, not a "
                f"{wanted.__name__}; switch architectures with a preset: "
                f"model.{side}=PRESET or model=PRESET (`clipl.models.list_presets()`)")
    return problems
