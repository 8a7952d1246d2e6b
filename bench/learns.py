"""Do the methods learn? Every method preset pretrained on a labelled sample, scored against
baselines.

    python bench/learns.py                          # every preset of every method, on digits
    python bench/learns.py --presets simclr_small mae_small --out bench/results/learns.json
    python bench/learns.py --domain pathology --presets dinov2_small
    python bench/learns.py --domain pathology --presets dinov2_small --set data.stain.scale=0.3

For each ``method=`` option (the shipped presets and any plugin's), one ``fmcore train`` run of
``--steps`` (default: the preset's entry in the domain's ``steps``) at the default encoder
(vit_tiny) and batch (64), then ``fmcore eval`` with kNN (DINO's weighted 20-NN) and the linear
probe on the domain's validation split. On digits (fmcore's own train/val split of
scikit-learn's digits) every feature kind is scored: the class token, the mean patch token and
both. On the labelled embedded samples (``data.sample=labelled``: pathology's tumour/normal
slides as 64-px tiles, radiology's effusion/clear CT crops, video's clips of shapes moving
horizontally or vertically, ophthalmology's fundus photographs with and without retinopathy,
points' six stretched and turned shapes) the
kind each preset is evaluated on by default (``method.features``), and on pathology also ABMIL
on the per-slide features ``fmcore embed`` writes (test patients). In the same run: the random
encoder each preset starts from (``checkpoint=random method=<preset>``: same architecture, same
init) and the raw pixels (``checkpoint=pixels``). ``--set`` adds config words to every training
run and to its random encoder (an ablation row: the same command with one setting changed).
Wall-clock time of every training run is recorded beside its scores: the budget is 10 minutes of
a 2-core CPU per preset, and a row over budget says so.

Everything runs through the ``fmcore`` command, so a row is reproduced by the commands it
prints. The table goes to stdout as markdown (for docs/benchmarks.md), the figures to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from fmcore.config import config_sources
from fmcore.labels import SAMPLE_LABELS
from fmcore.plugin_manager import registry

BUDGET_S = 600.0  # 10 minutes per preset on the 2-core CPU the targets are set for
DEFAULT_STEPS = 300  # a preset without an entry in its domain's steps (a plugin's)
FEATURES = ("cls", "mean", "cls+mean")
DEFAULT_FEATURES = "default"  # eval.features unset: the kind the checkpoint's method names
PROTOCOLS = ("knn", "linear")


@dataclass(frozen=True)
class Target:
    """A labelled domain the presets are pretrained and scored on."""

    words: tuple[str, ...]  # the fmcore words that select it, for train, eval and embed
    steps: dict[str, int]  # steps that fit the budget on 2 cores at batch 64 (vit_tiny)
    features: tuple[str, ...] = (DEFAULT_FEATURES,)
    mil_labels: str | None = None  # under run.cache_dir: ABMIL on per-slide features too


TARGETS = {
    "digits": Target(
        ("domain=digits",),
        {
            "simclr": 800,
            "simclr_small": 900,
            "dinov2": 300,
            "dinov2_small": 750,
            "mae": 800,
            "mae_small": 1800,
            "aim": 300,
            "aim_small": 1200,
            "arm": 300,
            "arm_small": 1200,
            "ijepa": 300,
            "ijepa_small": 1200,
            "digpt": 300,
            "digpt_small": 1000,
        },
        FEATURES,
    ),
    # 64-px tiles at 0.5 mpp with 16-px patches: 16 tokens, as digits.
    "pathology": Target(
        ("domain=pathology", "data.sample=labelled", "data.tile_size=64"),
        {"simclr_small": 900, "dinov2_small": 750, "mae_small": 1800},
        mil_labels=f"sample-data/pathology-labelled/{SAMPLE_LABELS}",
    ),
    # 8-frame clips (every 2nd frame) of 32 x 32 px with tubelets of 2 x 8 x 8: 64 tokens; 4
    # clips of each video. The class is the direction of motion.
    "video": Target(
        (
            "domain=video",
            "data.sample=labelled",
            "data.frames=8",
            "data.frame_size=32",
            "data.sampling_rate=2",
            "data.clips_per_video=4",
            "encoder.tokenizer.patch_size=8",
        ),
        {"mae_small": 400},
    ),
    # 96-px fundus photographs with 8-px patches: 144 tokens, about 113 inside the field of
    # view; both eyes of 128 patients, half with retinopathy.
    "ophthalmology": Target(
        (
            "domain=ophthalmology",
            "data.sample=labelled",
            "data.side=96",
            "encoder.tokenizer.patch_size=8",
        ),
        {"mae_small": 400},
    ),
    # OCT volumes of 16 x 64 x 64 voxels with 8^3 patches: 128 tokens; one eye of 128
    # patients, half with drusen.
    "ophthalmology-oct": Target(
        (
            "domain=ophthalmology",
            "data.mode=oct",
            "data.sample=labelled",
            "encoder.tokenizer.patch_size=8",
        ),
        {"mae_small": 300},
    ),
    # 512 points in 32 groups of 16 (Point-MAE: 1024 in 64 of 32, 5x the CPU time); 48 shapes
    # of each of 6 classes, stretched and turned at random.
    "points": Target(
        (
            "domain=points",
            "data.sample=labelled",
            "data.points=512",
            "encoder.tokenizer.num_groups=32",
            "encoder.tokenizer.group_size=16",
        ),
        {"mae_small": 300, "simclr_small": 300, "dinov2_small": 200},
    ),
    # 32^3-voxel CT crops with 8^3 patches: 64 tokens; 8 crops of each volume.
    "radiology": Target(
        ("domain=radiology", "data.sample=labelled", "data.crops_per_volume=8"),
        {"simclr_small": 250, "dinov2_small": 200, "mae_small": 500},
    ),
}


def fmcore(*words: str) -> None:
    """Run one fmcore command (this interpreter's), failing loudly with its output."""
    command = [sys.executable, "-m", "fmcore", *words]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: fmcore {' '.join(words)}\n{done.stdout}\n{done.stderr}")


def method_presets() -> list[str]:
    """Every ``method=`` option fmcore and the installed plugins ship."""
    return sorted(config_sources(registry()).options("method"))


def score(
    target: Target, checkpoint: str, run_dir: Path, cache: Path, extra: list[str]
) -> dict[str, Any]:
    """Accuracy (and its 95% interval) of every protocol x feature kind for one checkpoint,
    and of ABMIL where the target has slides."""
    extra = [f"run.cache_dir={cache}", *extra]
    scores: dict[str, Any] = {}
    kinds = ("pixels",) if checkpoint == "pixels" else target.features
    for protocol in PROTOCOLS:
        for kind in kinds:
            out = run_dir / f"eval-{protocol}-{kind}"
            words = ["eval", *target.words, f"eval={protocol}", f"checkpoint={checkpoint}"]
            if kind not in ("pixels", DEFAULT_FEATURES):
                words.append(f"eval.features={kind}")
            fmcore(*words, f"run.dir={out}", *extra)
            scores[f"{protocol}/{kind}"] = accuracy(out)
    if target.mil_labels and checkpoint != "pixels":
        features, out = run_dir / "slide-features", run_dir / "eval-mil"
        fmcore("embed", *target.words, f"checkpoint={checkpoint}", f"embed.out={features}", *extra)
        labels = cache / target.mil_labels
        fmcore(
            "eval",
            "eval=mil",
            f"eval.embeddings={features}",
            f"eval.labels={labels}",
            f"run.dir={out}",
        )
        scores["mil"] = accuracy(out)
    return scores


def accuracy(eval_dir: Path) -> dict[str, Any]:
    result = json.loads((eval_dir / "eval.json").read_text())
    return {
        "accuracy": result["metrics"]["accuracy"],
        "ci95": result.get("ci95", {}).get("accuracy"),
        "features": result.get("features"),
    }


def train(
    target: Target, preset: str, steps: int, run_dir: Path, cache: Path, settings: list[str]
) -> dict[str, Any]:
    words = ["train", *target.words, f"method={preset}", f"trainer.max_steps={steps}", *settings]
    started = time.perf_counter()
    fmcore(*words, f"run.dir={run_dir}", f"run.cache_dir={cache}", "trainer.progress=lines")
    seconds = time.perf_counter() - started
    return {"command": "fmcore " + " ".join(words), "seconds": seconds}


def data_words(settings: list[str]) -> list[str]:
    """The ``data.*`` words among ``settings``."""
    return [word for word in settings if word.startswith("data.")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", choices=sorted(TARGETS), default="digits")
    parser.add_argument("--presets", nargs="*", help="method options (default: all)")
    parser.add_argument("--steps", type=int, help="steps for every preset (default: the domain's)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config words for every run"
    )
    parser.add_argument("--work", type=Path, default=Path("bench/runs/learns"))
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    target = TARGETS[args.domain]
    presets = args.presets or method_presets()
    work = args.work / args.domain
    cache = work / "cache"  # the labelled samples are written here once
    results: dict[str, Any] = {
        "domain": args.domain,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": date.today().isoformat(),
        "budget_s": BUDGET_S,
        # The data words of --set change what every encoder sees (stain normalisation): the
        # pixels too.
        "pixels": score(target, "pixels", work / "pixels", cache, data_words(args.set)),
        "presets": {},
    }
    for preset in presets:
        steps = args.steps or target.steps.get(preset, DEFAULT_STEPS)
        run_dir = work / preset
        run = train(target, preset, steps, run_dir, cache, args.set)
        results["presets"][preset] = {
            **run,
            "steps": steps,
            "trained": score(target, str(run_dir), run_dir, cache, []),
            "random": score(
                target, "random", run_dir / "random", cache, [f"method={preset}", *args.set]
            ),
        }
        print(f"{preset}: {steps} steps in {run['seconds']:.0f} s", file=sys.stderr, flush=True)
        if args.out:  # after every preset, so a long bench leaves what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(target, results))


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    interval = entry["ci95"]
    low_high = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
    return f"{entry['accuracy']:.3f}{low_high}"


def markdown(target: Target, results: dict[str, Any]) -> str:
    columns = [f"{p}/{k}" for p in PROTOCOLS for k in target.features]
    names = [c.replace("/", " ").replace(f" {DEFAULT_FEATURES}", "") for c in columns]
    if target.mil_labels:
        columns, names = [*columns, "mil"], [*names, "ABMIL (slides)"]
    by_kind = target.features == (DEFAULT_FEATURES,)
    header = ["preset", "steps", "minutes", "encoder", *(["features"] if by_kind else []), *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    pixels = results["pixels"]
    pixel_cells = [_cell(pixels.get(f"{c.split('/')[0]}/pixels")) for c in columns]
    kind_cell = ["-"] if by_kind else []
    lines.append("| raw pixels | - | - | - | " + " | ".join(kind_cell + pixel_cells) + " |")
    for preset, row in results["presets"].items():
        minutes = row["seconds"] / 60
        over = " (over budget)" if row["seconds"] > results["budget_s"] else ""
        for label, scores in (("trained", row["trained"]), ("random", row["random"])):
            cells = [_cell(scores.get(c)) for c in columns]
            if by_kind:
                cells.insert(0, str(scores[columns[0]]["features"]))
            timing = f"{row['steps']} | {minutes:.1f}{over}" if label == "trained" else "- | -"
            lines.append(f"| {preset} | {timing} | {label} | " + " | ".join(cells) + " |")
    commands = [f"    {row['command']}" for row in results["presets"].values()]
    note = "Commands (then fmcore eval checkpoint=<run.dir> ...):"
    return "\n".join([*lines, "", note, *commands])


if __name__ == "__main__":
    main()
