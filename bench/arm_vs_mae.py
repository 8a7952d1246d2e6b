"""ARVideo's efficiency claim, side by side: a training step of ``method=arm`` (video: clusters
in a random order under a block-causal mask, every token through the trunk) against one of
``method=mae`` (VideoMAE: tube masking at 90%, the encoder on the visible tenth) on the same clips
and encoder. ARVideo reports training "14% faster" with "58% less GPU memory" than VideoMAE.

    python bench/arm_vs_mae.py --encoder vit_tiny --frames 8 --size 112 --batch 4 --steps 5

Each method runs in its own process (so each peak memory is its own): views, tokenizer, trunk,
head or decoder, loss, backward and AdamW on random clips (C, T, H, W) of the shipped recipes
(configs/method/{arm,mae}.yaml as composed for the video modality). On CUDA: bf16 autocast,
fused AdamW, peak memory from torch.cuda; on CPU fp32, peak resident set size. Prints one JSON
line per method, then their ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from omegaconf import OmegaConf

from fmcore.backbones.plugin import build_vit
from fmcore.config import compose, config_sources, core_config_dir, for_modality
from fmcore.encoder import Encoder
from fmcore.method import Batch, Method, StepContext
from fmcore.modalities.base import TokenizerSettings
from fmcore.modalities.video import Video
from fmcore.plugin_manager import registry
from fmcore.view_maker import ViewMaker

PATCH, TUBELET = 16, 2
METHODS = ("arm", "mae")


def build_method(name: str, encoder_size: str, frames: int, size: int) -> Method:
    encoder_config = compose([f"encoder={encoder_size}"], config_sources(registry())).encoder
    method_config = for_modality(
        OmegaConf.load(core_config_dir() / "method" / f"{name}.yaml").method, "video", "method"
    )
    trunk = build_vit(encoder_config)
    modality = Video()
    options = {"patch_size": PATCH, "tubelet": TUBELET}
    settings = TokenizerSettings(trunk.embed_dim, (frames, size, size), 3, options)
    encoder = Encoder(modality.build_tokenizer(settings), trunk)
    return registry().method(name)(method_config, encoder, modality)


def cpu_name() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def measure(name: str, args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    method = build_method(name, args.encoder, args.frames, args.size).to(device).train()
    clip = (args.frames, args.size, args.size)
    views = ViewMaker(method.modality, clip, method.encoder.tokenizer.size_multiple)
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    data = torch.rand(args.batch, 3, *clip, device=device)
    labels = torch.full((args.batch,), -1, device=device)
    generator = torch.Generator(device).manual_seed(0)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    times = []
    for step in range(args.steps + 1):  # the first step warms up and is not timed
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        ctx = StepContext(step, args.steps, 1e-4, 0.05, 0.99, views, generator)
        with autocast:
            loss = method(Batch(data, labels), ctx).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - started)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "method": name,
        "step_s": statistics.median(times),
        "peak_mib": round(peak, 1),
        "peak_kind": "cuda max allocated" if device.type == "cuda" else "max resident set",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_name(),
        "encoder": args.encoder,
        "clip": list(clip),
        "batch": args.batch,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="vit_tiny")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--only", choices=METHODS, help="measure one method in this process")
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args)), flush=True)
        return
    results = {}
    for name in METHODS:
        words = [*sys.argv[1:], "--only", name]
        done = subprocess.run(
            [sys.executable, __file__, *words], capture_output=True, text=True, check=True
        )
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(results[name]))
    arm, mae = results["arm"], results["mae"]
    print(
        json.dumps(
            {
                "arm_over_mae_step_time": round(arm["step_s"] / mae["step_s"], 3),
                "arm_over_mae_peak_memory": round(arm["peak_mib"] / mae["peak_mib"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
