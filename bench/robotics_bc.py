"""Does pretraining help a policy? Method presets pretrained on the embedded robotics sample,
scored by the behaviour-cloning probe against the random encoder and the raw pixels.

    python bench/robotics_bc.py                                  # mae_small, 800 steps
    python bench/robotics_bc.py --presets mae_small simclr_small --steps 600
    python bench/robotics_bc.py --presets mae_small --set data.format=hdf5 --out bc.json

For each preset, one ``fmcore train domain=robotics`` run (vit_tiny, batch 64, both cameras as
separate samples of 64 px with 8-px patches), then ``fmcore eval eval=bc`` of the trained
encoder, of the random encoder it started from (``checkpoint=random method=<preset>``) and,
once, of the raw pixels (``checkpoint=pixels``): action MSE and R² on the test episodes, and the
success rate of ``eval.rollouts`` closed-loop episodes of the simulated reaching task, beside
the state-only policy's. Everything runs through the ``fmcore`` command (the commands are
printed); the table goes to stdout as markdown (for docs/benchmarks.md), the figures to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path
from typing import Any

from learns import Target, fmcore, train

ROBOTICS = Target(("domain=robotics",), {"mae_small": 800})
COLUMNS = ("action_r2", "success_rate", "state_only_success_rate")


def behaviour_cloning(checkpoint: str, out: Path, cache: Path, extra: list[str]) -> dict[str, Any]:
    words = ["eval", *ROBOTICS.words, "eval=bc", f"checkpoint={checkpoint}", *extra]
    fmcore(*words, f"run.dir={out}", f"run.cache_dir={cache}")
    result = json.loads((out / "eval.json").read_text())
    return {"command": "fmcore " + " ".join(words), **result["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="*", default=["mae_small"])
    parser.add_argument("--steps", type=int, help="steps for every preset (default: 800)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=Path("bench/runs/robotics_bc"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cache = args.work / "cache"
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": date.today().isoformat(),
        "pixels": behaviour_cloning("pixels", args.work / "pixels", cache, args.set),
        "presets": {},
    }
    for preset in args.presets:
        steps = args.steps or ROBOTICS.steps.get(preset, 800)
        run_dir = args.work / preset
        run = train(ROBOTICS, preset, steps, run_dir, cache, args.set)
        results["presets"][preset] = {
            **run,
            "steps": steps,
            "trained": behaviour_cloning(str(run_dir), run_dir / "bc", cache, args.set),
            "random": behaviour_cloning(
                "random", run_dir / "bc-random", cache, [f"method={preset}", *args.set]
            ),
        }
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict[str, Any]) -> str:
    header = ["preset", "steps", "minutes", "encoder", "action R²", "success", "state only"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(metrics: dict[str, Any]) -> str:
        return " | ".join(f"{metrics[c]:.3f}" for c in COLUMNS)

    lines.append(f"| raw pixels | - | - | - | {cells(results['pixels'])} |")
    for preset, row in results["presets"].items():
        minutes = f"{row['seconds'] / 60:.1f}"
        lines.append(
            f"| {preset} | {row['steps']} | {minutes} | trained | {cells(row['trained'])} |"
        )
        lines.append(f"| {preset} | - | - | random | {cells(row['random'])} |")
    commands = [f"    {row['command']}" for row in results["presets"].values()]
    return "\n".join([*lines, "", "Commands (then fmcore eval ... eval=bc):", *commands])


if __name__ == "__main__":
    main()
