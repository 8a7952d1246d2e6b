"""MAE's saving: a training step at mask ratio 0.75 against the same step on all tokens.

    python bench/mae_step.py --encoder vit_small --batch 8 --steps 3
    python bench/mae_step.py --encoder vit_tiny --method mae_small

Both steps run the same MAE (views, tokenizer, decoder, loss on the hidden tokens, backward,
AdamW) on the same batch; they differ only in what the encoder sees. ``mae`` drops the hidden
tokens (the encoder runs on the visible quarter); ``all_tokens`` keeps every token, the hidden
ones replaced by the encoder's mask token (SimMIM-style), so the decoder gets the same number of
tokens. The ratio of their step times is what MAE's design buys; the paper's point is that it is
well under 0.5. ``--method`` picks the recipe (``mae``: the published 8 x 512 decoder;
``mae_small``: the small-compute preset's decoder and mask ratio); ``--mask-ratio`` overrides
the recipe's. On CUDA: bf16 autocast and fused AdamW; on CPU fp32. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from fmcore.backbones.plugin import build_vit
from fmcore.config import compose, config_sources
from fmcore.encoder import Encoder
from fmcore.modalities.grid import GridTokenizer
from fmcore.modalities.image2d import Image2D
from fmcore.plugin_manager import registry
from fmcore.plugins.mae.method import MAE
from fmcore.view_maker import ViewMaker


def build_method(args: argparse.Namespace) -> tuple[MAE, DictConfig]:
    words = [f"encoder={args.encoder}", f"method={args.method}"]
    if args.mask_ratio is not None:
        words.append(f"method.mask_ratio={args.mask_ratio}")
    config = compose(words, config_sources(registry()))
    trunk = build_vit(config.encoder)
    patch, image = (args.patch, args.patch), (args.image, args.image)
    encoder = Encoder(GridTokenizer(trunk.embed_dim, args.channels, patch, image), trunk)
    return MAE(config.method, encoder, Image2D()), config


def mae_loss(method: MAE, view: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MAE's own step: the encoder sees the visible tokens only."""
    out = method.reconstruct(view, generator)
    target = method.encoder.tokenizer.reconstruction_target(view, out.tokens)
    return method.modality.reconstruction_loss(out.pred, target, out.mask)


def all_tokens_loss(method: MAE, view: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The same step with the encoder on every token, the hidden ones as its mask token."""
    tokens = method.encoder.tokenizer(view)  # (B, N, D)
    batch, num_tokens = tokens.x.shape[:2]
    mask = method.modality.token_mask(batch, tokens, method.mask_ratio, generator)  # (B, N)
    encoded = method.encoder.encode_tokens(tokens, mask=mask)  # patches (B, N, D)
    every = torch.arange(num_tokens, device=view.device).expand(batch, -1)  # (B, N)
    pred = method.decoder(encoded.cls, encoded.patches, every, tokens.pos)  # (B, N, P)
    target = method.encoder.tokenizer.reconstruction_target(view, tokens)
    return method.modality.reconstruction_loss(pred, target, mask)


LossFn = Callable[[MAE, torch.Tensor, torch.Generator], torch.Tensor]


class Setup:
    """One arm of the comparison: its own method, optimizer and seeded views, same batch."""

    def __init__(self, loss_fn: LossFn, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)  # both arms start from the same weights
        self.method, config = build_method(args)
        self.method.to(device)
        self.loss_fn = loss_fn
        self.device = device
        image, patch = (args.image, args.image), (args.patch, args.patch)
        self.views = ViewMaker(self.method.modality, image, patch)
        self.optimizer = torch.optim.AdamW(
            self.method.parameters(),
            lr=1e-4,
            betas=tuple(config.trainer.betas),
            fused=device.type == "cuda",
        )
        self.images = torch.rand(args.batch, args.channels, args.image, args.image, device=device)
        self.generator = torch.Generator(device=device).manual_seed(0)

    def step(self) -> float:
        """Seconds of one training step."""
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        self._sync()
        started = time.perf_counter()
        (view,) = self.views(self.images, self.method.view_specs["global"], self.generator)
        with autocast:
            loss = self.loss_fn(self.method, view, self.generator)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        return time.perf_counter() - started

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="vit_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--method", default="mae", help="an MAE recipe: mae or mae_small")
    parser.add_argument(
        "--mask-ratio", type=float, default=None, help="default: the recipe's (mae: 0.75)"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    arms = {
        "mae": Setup(mae_loss, args, device),
        "all_tokens": Setup(all_tokens_loss, args, device),
    }
    for arm in arms.values():
        for _ in range(args.warmup):
            arm.step()
        arm.method.encoder.take_token_count()
    # Alternating steps, median per arm: a shared machine's load drifts, the ratio should not.
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.steps):
        for name, arm in arms.items():
            times[name].append(arm.step())
    seconds = {name: statistics.median(values) for name, values in times.items()}
    tokens = {
        name: arm.method.encoder.take_token_count() // args.steps for name, arm in arms.items()
    }
    decoder = arms["mae"].method.decoder
    print(
        json.dumps(
            {
                "encoder": args.encoder,
                "device": torch.cuda.get_device_name()
                if device.type == "cuda"
                else f"cpu ({platform.processor() or platform.machine()},"
                f" {torch.get_num_threads()} threads)",
                "precision": "bf16" if device.type == "cuda" else "fp32",
                "batch": args.batch,
                "image": f"{args.channels}x{args.image}x{args.image}, patch {args.patch}",
                "method": args.method,
                "mask_ratio": arms["mae"].method.mask_ratio,
                "decoder": f"{len(decoder.blocks)} blocks x {decoder.embed.out_features}",
                "encoder_tokens_per_step": tokens,
                "seconds_per_step": {name: round(value, 3) for name, value in seconds.items()},
                "ratio": round(seconds["mae"] / seconds["all_tokens"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
