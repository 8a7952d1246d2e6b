"""Do the methods learn? Every method preset pretrained on digits, scored against baselines.

    python bench/learns.py                          # every preset of every method
    python bench/learns.py --presets simclr_small mae_small --out bench/results/learns.json

For each ``method=`` option (the shipped presets and any plugin's), one ``fmcore train
domain=digits`` run of ``--steps`` (default: the preset's entry in ``STEPS``) at the default
encoder (vit_tiny) and batch (64), then ``fmcore eval`` on scikit-learn's digits (fmcore's own
train/val split) with kNN (DINO's weighted 20-NN) and the linear probe, on the class token, the
mean patch token and both. In the same run: the random encoder each preset starts from
(``checkpoint=random method=<preset>``: same architecture, same init) and the raw pixels
(``checkpoint=pixels``). Wall-clock time of every training run is recorded beside its scores:
the budget is 10 minutes of a 2-core CPU per preset, and a row over budget says so.

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
from datetime import date
from pathlib import Path
from typing import Any

from fmcore.config import config_sources
from fmcore.plugin_manager import registry

BUDGET_S = 600.0  # 10 minutes per preset on the 2-core CPU the targets are set for
DEFAULT_STEPS = 300  # a preset without an entry below (a plugin's)
STEPS = {  # steps that fit the budget on 2 cores at batch 64 (vit_tiny)
    "simclr": 800,
    "simclr_small": 900,
    "dinov2": 300,
    "dinov2_small": 750,
    "mae": 800,
    "mae_small": 1800,
}
FEATURES = ("cls", "mean", "cls+mean")
PROTOCOLS = ("knn", "linear")


def fmcore(*words: str) -> None:
    """Run one fmcore command (this interpreter's), failing loudly with its output."""
    command = [sys.executable, "-m", "fmcore", *words]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: fmcore {' '.join(words)}\n{done.stdout}\n{done.stderr}")


def method_presets() -> list[str]:
    """Every ``method=`` option fmcore and the installed plugins ship."""
    return sorted(config_sources(registry()).options("method"))


def score(checkpoint: str, run_dir: Path, extra: list[str]) -> dict[str, Any]:
    """Accuracy (and its 95% interval) of every protocol x feature kind for one checkpoint."""
    scores: dict[str, Any] = {}
    kinds = ("pixels",) if checkpoint == "pixels" else FEATURES
    for protocol in PROTOCOLS:
        for kind in kinds:
            out = run_dir / f"eval-{protocol}-{kind}"
            words = [
                "eval",
                "domain=digits",
                f"eval={protocol}",
                f"checkpoint={checkpoint}",
                f"run.dir={out}",
                *extra,
            ]
            if kind != "pixels":
                words.append(f"eval.features={kind}")
            fmcore(*words)
            result = json.loads((out / "eval.json").read_text())
            scores[f"{protocol}/{kind}"] = {
                "accuracy": result["metrics"]["accuracy"],
                "ci95": result.get("ci95", {}).get("accuracy"),
            }
    return scores


def train(preset: str, steps: int, run_dir: Path) -> dict[str, Any]:
    words = [
        "train",
        "domain=digits",
        f"method={preset}",
        f"trainer.max_steps={steps}",
        f"run.dir={run_dir}",
        "trainer.progress=lines",
    ]
    started = time.perf_counter()
    fmcore(*words)
    seconds = time.perf_counter() - started
    return {"command": "fmcore " + " ".join(words[:-2]), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="*", help="method options (default: all)")
    parser.add_argument("--steps", type=int, help="steps for every preset (default: STEPS)")
    parser.add_argument("--work", type=Path, default=Path("bench/runs/learns"))
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    presets = args.presets or method_presets()
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": date.today().isoformat(),
        "budget_s": BUDGET_S,
        "pixels": score("pixels", args.work / "pixels", []),
        "presets": {},
    }
    for preset in presets:
        steps = args.steps or STEPS.get(preset, DEFAULT_STEPS)
        run_dir = args.work / preset
        run = train(preset, steps, run_dir)
        results["presets"][preset] = {
            **run,
            "steps": steps,
            "trained": score(str(run_dir), run_dir, []),
            "random": score("random", run_dir / "random", [f"method={preset}"]),
        }
        print(f"{preset}: {steps} steps in {run['seconds']:.0f} s", file=sys.stderr, flush=True)
        if args.out:  # after every preset, so a long bench leaves what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def _cell(entry: dict[str, Any]) -> str:
    interval = entry["ci95"]
    low_high = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
    return f"{entry['accuracy']:.3f}{low_high}"


def markdown(results: dict[str, Any]) -> str:
    header = "| preset | steps | minutes | encoder | " + " | ".join(
        f"{p} {k}" for p in PROTOCOLS for k in FEATURES
    )
    lines = [header + " |", "|" + "---|" * (4 + len(PROTOCOLS) * len(FEATURES))]
    pixels = results["pixels"]
    pixel_cells = [_cell(pixels[f"{p}/pixels"]) for p in PROTOCOLS for _ in FEATURES]
    lines.append("| raw pixels | - | - | - | " + " | ".join(pixel_cells) + " |")
    for preset, row in results["presets"].items():
        minutes = row["seconds"] / 60
        over = " (over budget)" if row["seconds"] > results["budget_s"] else ""
        for label, scores in (("trained", row["trained"]), ("random", row["random"])):
            cells = [_cell(scores[f"{p}/{k}"]) for p in PROTOCOLS for k in FEATURES]
            timing = f"{row['steps']} | {minutes:.1f}{over}" if label == "trained" else "- | -"
            lines.append(f"| {preset} | {timing} | {label} | " + " | ".join(cells) + " |")
    commands = [f"    {row['command']}" for row in results["presets"].values()]
    note = "Commands (then fmcore eval checkpoint=<run.dir> ...):"
    return "\n".join([*lines, "", note, *commands])


if __name__ == "__main__":
    main()
