"""Training throughput of the shared trunk: images/s and achieved TFLOP/s for ViT sizes.

    python bench/trunk_throughput.py --sizes vit_small vit_base --batch 64 --steps 20

On CUDA it runs bf16 autocast, SDPA attention and fused AdamW (optionally torch.compile); on CPU
fp32. Each step is a forward + backward + optimizer step on 224x224 RGB images, patch 16.
Prints one JSON line per size, for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time

import torch

from fmcore.backbones.plugin import build_vit
from fmcore.config import compose, config_sources
from fmcore.encoder import Encoder
from fmcore.modalities.grid import GridTokenizer
from fmcore.plugin_manager import registry


def build_encoder(size: str, image: int, patch: int) -> Encoder:
    config = compose([f"encoder={size}"], config_sources(registry()))
    trunk = build_vit(config.encoder)
    tokenizer = GridTokenizer(trunk.embed_dim, 3, (patch, patch), (image, image))
    return Encoder(tokenizer, trunk)


def measure(size: str, batch: int, steps: int, warmup: int, image: int, compile_: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = build_encoder(size, image, 16).to(device)
    if compile_:
        encoder.trunk.compile()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    images = torch.rand(batch, 3, image, image, device=device)

    def step() -> None:
        with autocast:
            out = encoder(images)
            loss = out.cls.float().pow(2).mean() + out.patches.float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = (image // 16) ** 2
    flops = 3 * encoder.trunk.forward_flops(tokens) * batch * steps  # forward + 2x backward
    return {
        "size": size,
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "precision": "bf16" if device.type == "cuda" else "fp32",
        "compile": compile_,
        "batch": batch,
        "images_per_s": round(batch * steps / seconds, 1),
        "trunk_tflops": round(flops / seconds / 1e12, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.type == "cuda"
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["vit_small", "vit_base"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    for size in args.sizes:
        print(
            json.dumps(measure(size, args.batch, args.steps, args.warmup, args.image, args.compile))
        )


if __name__ == "__main__":
    main()
