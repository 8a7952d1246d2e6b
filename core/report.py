"""``fmcore report <run dir>``: a training run's metrics as PNG figures, listed in ``index.md``.

Everything comes from files the run (and ``fmcore eval`` given the same ``run.dir``) wrote:
``metrics.jsonl`` (loss, schedules, throughput, the ``collapse/*`` signals, the method's other
metrics, periodic ``eval/*`` lines), ``eval.json`` and ``config.yaml``. Pictures plugins save in
folders of the run directory (MAE's ``reconstructions/step_N.png``) are linked from the index
where they are, by folder, without core knowing any plugin. The report is built beside
``report/`` and then put in its place, so it never mixes figures of two runs of the command.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fmcore.collapse import PREFIX as COLLAPSE_PREFIX
from fmcore.errors import ConfigError, MissingPath
from fmcore.run_files import CHECKPOINTS_DIR, EVAL_FILE, METRICS_FILE, REPORT_DIR, RUN_CONFIG_FILE

NOT_PICTURES = (REPORT_DIR, CHECKPOINTS_DIR)  # run-directory folders whose PNGs are not linked
INDEX_FILE = "index.md"
EVAL_PREFIX = "eval/"
SCHEDULE_KEYS = ("lr", "weight_decay")
THROUGHPUT_KEYS = ("samples_per_s", "tokens_per_s")
MARKERS_UP_TO = 50  # points per line drawn with markers, so a few logged steps stay visible

Series = tuple[list[int], list[float]]  # steps, values


@dataclass
class Report:
    directory: Path
    figures: list[Path] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl``; a line a crash cut short is left out."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise MissingPath(
            f"{run_dir} holds no {METRICS_FILE}: give the directory of a training run (its run.dir)"
        )
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if not records:
        raise ConfigError(f"{path} holds no metrics yet: the run has not logged a step")
    return records


def series(records: Iterable[dict[str, Any]], key: str) -> Series:
    """(steps, values) of ``key`` over the records that hold a finite number for it."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            steps.append(int(record["step"]))
            values.append(float(value))
    return steps, values


def _style(count: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 3} if count <= MARKERS_UP_TO else {}


def panels_figure(title: str, panels: dict[str, Series]) -> Figure:
    """One axes per series, stacked, sharing the step axis."""
    figure = Figure(figsize=(7, 1.0 + 2.2 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, (steps, values)) in zip(axes, panels.items(), strict=True):
        ax.plot(steps, values, **_style(len(steps)))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)
    return figure


def lines_figure(title: str, lines: dict[str, Series], ylabel: str) -> Figure:
    """Several series on one axes, with a legend."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    for label, (steps, values) in lines.items():
        ax.plot(steps, values, label=label, **_style(len(steps)))
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    figure.suptitle(title)
    return figure


def eval_figure(result: dict[str, Any]) -> Figure:
    """The metrics of an ``eval.json`` as bars, with their 95% intervals where it has them."""
    names = list(result["metrics"])
    values = [float(result["metrics"][name]) for name in names]
    intervals = result.get("ci95") or {}
    errors = None
    if all(name in intervals for name in names):
        errors = [
            [value - intervals[name][0] for name, value in zip(names, values, strict=True)],
            [intervals[name][1] - value for name, value in zip(names, values, strict=True)],
        ]
    figure = Figure(figsize=(7, 4), layout="constrained")
    ax = figure.subplots()
    bars = ax.bar(names, values, yerr=errors, capsize=4)
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    step = result.get("checkpoint_step")
    at = f", step {step}" if step is not None else ""
    figure.suptitle(f"fmcore eval: {result['protocol']} on {result['domain']}{at}")
    return figure


def figures(records: list[dict[str, Any]], eval_result: dict[str, Any] | None) -> dict[str, Figure]:
    """``{file name: figure}`` for what the run recorded; figures without data are left out."""
    train = [r for r in records if not any(k.startswith(EVAL_PREFIX) for k in r)]
    evaluation = [r for r in records if any(k.startswith(EVAL_PREFIX) for k in r)]

    def present(keys: Iterable[str], source: list[dict[str, Any]]) -> dict[str, Series]:
        found = {key: series(source, key) for key in keys}
        return {key: value for key, value in found.items() if value[0]}

    collapse_keys = sorted({k for r in train for k in r if k.startswith(COLLAPSE_PREFIX)})
    plotted = {"step", "loss", *SCHEDULE_KEYS, *THROUGHPUT_KEYS, *collapse_keys}
    other_keys = sorted({k for r in train for k in r} - plotted)
    eval_keys = sorted({k for r in evaluation for k in r if k.startswith(EVAL_PREFIX)})
    candidates = {
        "loss.png": ("Training loss", present(["loss"], train)),
        "schedules.png": ("Schedules", present(SCHEDULE_KEYS, train)),
        "throughput.png": ("Throughput", present(THROUGHPUT_KEYS, train)),
        "collapse.png": ("Collapse signals", present(collapse_keys, train)),
        "other_metrics.png": ("Other training metrics", present(other_keys, train)),
    }
    made = {
        name: panels_figure(title, panels) for name, (title, panels) in candidates.items() if panels
    }
    eval_lines = present(eval_keys, evaluation)
    if eval_lines:
        labels = {key.removeprefix(EVAL_PREFIX): value for key, value in eval_lines.items()}
        made["periodic_eval.png"] = lines_figure("Evaluation during training", labels, "score")
    if eval_result is not None:
        made["eval.png"] = eval_figure(eval_result)
    return made


def run_figures(run_dir: Path) -> dict[str, Figure]:
    """``{file name: figure}`` of a run directory's ``metrics.jsonl`` and ``eval.json``."""
    run_dir = Path(run_dir)
    return figures(read_metrics(run_dir), _read_json(run_dir / EVAL_FILE))


def write_report(run_dir: Path) -> Report:
    """Write ``run_dir/report/``: one PNG per figure and ``index.md`` listing them."""
    run_dir = Path(run_dir)
    drawn = run_figures(run_dir)
    final = run_dir / REPORT_DIR
    building = run_dir / f".{REPORT_DIR}.partial-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    titles: dict[str, str] = {}
    pictures = plugin_pictures(run_dir)
    try:
        for name, figure in drawn.items():
            figure.savefig(building / name, dpi=100)
            titles[name] = figure.get_suptitle()
        (building / INDEX_FILE).write_text(
            index_markdown(run_dir, titles, pictures, _run_summary(run_dir / RUN_CONFIG_FILE))
        )
        shutil.rmtree(final, ignore_errors=True)
        building.rename(final)
    finally:
        shutil.rmtree(building, ignore_errors=True)  # left only when something above failed
    return Report(final, [final / name for name in titles], pictures)


def plugin_pictures(run_dir: Path) -> list[Path]:
    """PNGs one folder below the run directory (MAE's ``reconstructions/``), by folder and name."""
    return sorted(
        path
        for path in run_dir.glob("*/*.png")
        if path.parent.name not in NOT_PICTURES and not path.parent.name.startswith(".")
    )


def index_markdown(
    run_dir: Path, titles: dict[str, str], pictures: list[Path], summary: str
) -> str:
    lines = [f"# Report: {run_dir.name}", ""]
    if summary:
        lines += [summary, ""]
    for name, title in titles.items():
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    folder = None
    for path in pictures:
        if path.parent.name != folder:
            folder = path.parent.name
            lines += [f"## {folder}", ""]
        lines += [f"![{folder} {path.stem}](../{folder}/{path.name})", ""]
    return "\n".join(lines)


def _run_summary(config_path: Path) -> str:
    """One line naming what was trained, from the run's ``config.yaml`` (empty without it)."""
    if not config_path.is_file():
        return ""
    config = yaml.safe_load(config_path.read_text()) or {}
    chosen = config.get("defaults") or {}
    parts = [
        f"{group} {option if isinstance(option, str) else '+'.join(option)}"
        for group, option in chosen.items()
    ]
    steps = (config.get("trainer") or {}).get("max_steps")
    return ", ".join(parts + ([f"{steps} steps"] if steps is not None else []))


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from error
