"""Evaluation as pure functions (no Lightning): zero-shot classification, retrieval, linear probe.

The Lightning adapters are in clipl.callbacks; `clipl eval` (clipl.cli.eval) runs the same code on
a saved checkpoint.
"""

from clipl.eval.config import EvalConfig
from clipl.eval.linear_probe import LinearProbeResult, fit_logistic_regression, linear_probe
from clipl.eval.prompts import imagenet_classnames, load_classnames, load_templates
from clipl.eval.results import read_results, write_result
from clipl.eval.retrieval import gather_retrieval_features, retrieval_metrics
from clipl.eval.zero_shot import ZeroShotCounter, classifier_weights, zero_shot_metrics

__all__ = [
    "EvalConfig",
    "LinearProbeResult",
    "ZeroShotCounter",
    "classifier_weights",
    "fit_logistic_regression",
    "gather_retrieval_features",
    "imagenet_classnames",
    "linear_probe",
    "load_classnames",
    "load_templates",
    "read_results",
    "retrieval_metrics",
    "write_result",
    "zero_shot_metrics",
]
