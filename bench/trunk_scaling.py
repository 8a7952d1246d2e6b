"""Forward + backward time and peak memory of the trunks against sequence length.

    python bench/trunk_scaling.py                                   # vit and mamba, CPU
    python bench/trunk_scaling.py --lengths 256 1024 4096 16384 --width 384 --depth 12 --device cuda

Every registered trunk (or ``--trunks``) is built at the same width and depth from the
``encoder`` config, fed ``--batch`` sequences of random tokens, and timed over a forward pass
and a backward pass of the sum of its outputs (median of ``--repeats`` after one warm-up).
Each (trunk, length) runs in its own process, so one that runs out of memory is reported as
such and the rest go on. Peak memory is the CUDA allocator's peak on a GPU, and on a CPU the
growth of the process's peak resident set over what it held once the trunk and inputs were
built. The table (markdown) goes to stdout, with the Mamba / ViT time ratio per length and the
shortest length at which a linear-cost trunk is faster than the ViT.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from typing import Any

import torch

from fmcore.config import compose, config_sources
from fmcore.modalities.base import Tokens
from fmcore.plugin_manager import registry

REFERENCE = "vit"  # the quadratic-cost trunk the others are compared with


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(trunk_name: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time and peak memory of one trunk at one length, in this process."""
    torch.manual_seed(0)
    words = [
        f"encoder.trunk={trunk_name}",
        f"encoder.embed_dim={args.width}",
        f"encoder.depth={args.depth}",
        f"encoder.vit.num_heads={args.heads}",
    ]
    config = compose(words, config_sources(registry()))
    device = torch.device(args.device)
    trunk = registry().trunk(trunk_name)(config.encoder).to(device)
    tokens = Tokens(
        x=torch.randn(args.batch, length, args.width, device=device),
        pos=torch.zeros(1, length, args.width, device=device),
    )

    def step() -> None:
        out = trunk(tokens)
        (out.cls.sum() + out.patches.sum()).backward()
        trunk.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    held = peak_rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else max(peak_rss_bytes() - held, 0)
    )
    return {"seconds": statistics.median(seconds), "peak_bytes": peak}


def measure_in_subprocess(trunk_name: str, length: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", trunk_name, str(length), *sys.argv[1:]]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        reason = "killed (out of memory?)" if done.returncode < 0 else done.stderr.strip()[-200:]
        return {"error": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, dict[int, dict]], args: argparse.Namespace) -> str:
    trunks = list(results)
    header = ["length", *(f"{t} s" for t in trunks), *(f"{t} peak MiB" for t in trunks)]
    others = [t for t in trunks if t != REFERENCE]
    if REFERENCE in results:
        header += [f"{t} / {REFERENCE} time" for t in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for length in args.lengths:
        cells = [str(length)]
        rows = [results[t][length] for t in trunks]
        cells += [f"{r['seconds']:.3f}" if "seconds" in r else r["error"] for r in rows]
        cells += [f"{r['peak_bytes'] / 2**20:.0f}" if "peak_bytes" in r else "-" for r in rows]
        if REFERENCE in results:
            reference = results[REFERENCE][length]
            for other in others:
                row = results[other][length]
                both = "seconds" in row and "seconds" in reference
                cells.append(f"{row['seconds'] / reference['seconds']:.2f}" if both else "-")
        lines.append("| " + " | ".join(cells) + " |")
    for other in others:
        if REFERENCE not in results:
            break
        faster = [  # a reference that failed (out of memory) counts as infinitely slow
            length
            for length in args.lengths
            if "seconds" in results[other][length]
            and results[other][length]["seconds"]
            < results[REFERENCE][length].get("seconds", float("inf"))
        ]
        lines.append(
            f"\n{other} is faster than {REFERENCE} from {faster[0]} tokens"
            if faster
            else f"\n{other} is not faster than {REFERENCE} at any length measured"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trunks", nargs="*", help="registered trunks (default: all)")
    parser.add_argument("--lengths", type=int, nargs="*", default=[256, 1024, 4096])
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=3, help="the ViT's heads")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", nargs=2, metavar=("TRUNK", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        torch.set_flush_denormal(True)
        print(json.dumps(measure(args.one[0], int(args.one[1]), args)))
        return
    trunks = args.trunks or sorted(registry().trunks, key=lambda t: t != REFERENCE)
    results = {t: {n: measure_in_subprocess(t, n, args) for n in args.lengths} for t in trunks}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{date.today()} {machine}, {device}, torch {torch.__version__}")
    print(f"width {args.width}, depth {args.depth}, batch {args.batch}\n")
    print(markdown(results, args))


if __name__ == "__main__":
    main()
