"""Evaluation results as clip_benchmark JSON files (one per dataset, model and task).

Tasks and metric names follow clip_benchmark: "zeroshot_classification" (acc1, acc5,
mean_per_class_recall), "zeroshot_retrieval" (image_retrieval_recall@K, text_retrieval_recall@K),
"linear_probe" (lp_acc1, lp_acc5, lp_mean_per_class_recall).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Optional

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval", "linear_probe": "linear_probe"}
"""clipl task name -> clip_benchmark task name."""


def benchmark_metrics(task: str, metrics: dict[str, float]) -> dict[str, float]:
    """Metric names as clip_benchmark writes them (the linear probe's get an "lp_" prefix)."""
    if task == "linear_probe":
        return {k if k.startswith("lp_") or k not in ("acc1", "acc5", "mean_per_class_recall") else f"lp_{k}": v
                for k, v in metrics.items()}
    return dict(metrics)


def checkpoint_name(checkpoint: str, step: Optional[int]) -> str:
    """clip_benchmark's ``pretrained`` column: the checkpoint (file or run) with its step, so rows of
    different checkpoints of one run never merge in ``clip_benchmark build`` tables."""
    return checkpoint if step is None else f"{checkpoint}@step{int(step)}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name).strip("_") or "dataset"


def write_result(
    out_dir: str | Path,
    dataset: str,
    task: str,
    metrics: dict[str, float],
    model: str = "clipl",
    pretrained: str = "",
    step: Optional[int] = None,
    language: str = "en",
    extra: Optional[dict] = None,
) -> Path:
    """Write one clip_benchmark JSON into ``out_dir``; never overwrites (a suffix is added instead).

    File name: ``<task>_<dataset>[_step<NNNNNNNN>].json``; ``task`` is a clipl task name
    ("zeroshot", "retrieval", "linear_probe").
    """
    if task not in TASKS:
        raise ValueError(f"unknown eval task {task!r}; tasks: {', '.join(TASKS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "dataset": dataset,
        "model": model,
        "pretrained": pretrained,
        "task": TASKS[task],
        # NaN is not JSON; clip_benchmark's readers treat a missing/None value as "not reported".
        "metrics": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in benchmark_metrics(task, metrics).items()},
        "language": language,
    }
    if step is not None:
        record["step"] = int(step)
    if extra:
        record.update(extra)
    stem = f"{TASKS[task]}_{_safe(dataset)}" + (f"_step{int(step):08d}" if step is not None else "")
    for n in range(10_000):
        path = out_dir / (f"{stem}.json" if n == 0 else f"{stem}_{n}.json")
        try:
            # "x" mode fails if the file exists: an earlier result is never silently replaced.
            with open(path, "x", encoding="utf-8") as f:
                json.dump(record, f, indent=1, sort_keys=False)
                f.write("\n")
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"too many results named {stem}*.json in {out_dir}")


def read_results(out_dir: str | Path) -> list[dict]:
    """All clip_benchmark records in ``out_dir``, sorted by file name."""
    return [json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json"))]


def format_table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    """A plain-text table of (task, dataset, metrics) rows, metrics in percent."""
    lines = [f"{'task':<14} {'dataset':<24} metrics"]
    for task, dataset, metrics in rows:
        cells = "  ".join(f"{k}={100 * v:.2f}" for k, v in metrics.items() if isinstance(v, (int, float)) and k != "weight_decay")
        lines.append(f"{task:<14} {dataset:<24} {cells}")
    return "\n".join(lines)
