"""The contracts hold on every modality: a domain of each layout trains through the real engine.

The domains here decode generated arrays (shapes and value ranges of the real thing); the real
file-format domains come with their own issues and tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN
from safetensors.torch import load_file

from fmcore.config import compose, config_sources
from fmcore.domain import Domain, Sample
from fmcore.engine.trainer import train
from fmcore.plugin_manager import load_registry
from fmcore.transport import quantize


class GeneratedDomain(Domain):
    """Samples are smooth random fields (or clouds on a sphere), seeded by their index."""

    def find_samples(self, split: str) -> Sequence[int]:
        return list(range(24))

    def load(self, ref: int) -> Sample:
        generator = torch.Generator().manual_seed(ref)
        if self.modality == "points":
            xyz = torch.nn.functional.normalize(
                torch.randn(self.sample_size[0], 3, generator=generator), dim=1
            )
            return Sample(data=torch.cat([xyz * (1 + 0.1 * (ref % 3)), xyz[:, :1]], dim=1))
        coarse = torch.rand(
            self.channels, *(max(2, s // 4) for s in self.sample_size), generator=generator
        )
        mode = "bilinear" if len(self.sample_size) == 2 else "trilinear"
        field = torch.nn.functional.interpolate(coarse[None], size=self.sample_size, mode=mode)[0]
        return Sample(data=quantize(field, torch.uint8), label=ref % 2)


def make_domain(modality: str) -> type[GeneratedDomain]:
    return type(
        f"Generated_{modality}",
        (GeneratedDomain,),
        {"name": f"gen_{modality}", "modality": modality, "float_samples": modality == "points"},
    )


CASES = {
    "image2d": ["+data.size=[16,16]", "+data.channels=3", "encoder.tokenizer.patch_size=4"],
    "volume3d": ["+data.size=[16,16,16]", "+data.channels=1", "encoder.tokenizer.patch_size=8"],
    "video": [
        "+data.size=[4,16,16]",
        "+data.channels=3",
        "encoder.tokenizer.patch_size=8",
        "encoder.tokenizer.tubelet=2",
    ],
    "points": [
        "+data.size=[256]",
        "+data.channels=4",
        "encoder.tokenizer.num_groups=16",
        "encoder.tokenizer.group_size=8",
    ],
}


DINOV2_SMALL_HEADS = [
    "method=dinov2_small",
    "method.dino.prototypes=64",
    "method.ibot.prototypes=64",
    "method.dino.hidden_dim=32",
    "method.dino.bottleneck_dim=16",
    "method.views.local.count=2",  # the preset has none: multi-crop on every modality too
]


SMALL_HEAD = ["method.head.width=32", "method.head.depth=1"]
IJEPA_SMALL_PREDICTOR = [
    "method=ijepa_small",
    "method.predictor.embed_dim=32",
    "method.predictor.depth=1",
    "method.predictor.num_heads=2",
    "method.masks.min_context=1",
]
METHOD_WORDS = {
    "dinov2": DINOV2_SMALL_HEADS,
    "aim": ["method=aim_small", *SMALL_HEAD],
    "arm": ["method=arm_small", *SMALL_HEAD],
    "digpt": ["method=digpt_small", *SMALL_HEAD],
    "ijepa": IJEPA_SMALL_PREDICTOR,
}
GRID_MODALITIES = sorted(set(CASES) - {"points"})  # the autoregressive methods need a grid


@pytest.mark.parametrize(
    ("method", "modality"),
    [(method, modality) for method in ("simclr", "dinov2", "ijepa") for modality in sorted(CASES)]
    + [(method, modality) for method in ("aim", "arm", "digpt") for modality in GRID_MODALITIES],
)
def test_every_method_trains_on_every_modality(method: str, modality: str, tmp_path: Path) -> None:
    registry = load_registry()
    domain = make_domain(modality)
    registry.domains[domain.name] = domain
    run = tmp_path / "run"
    words = [w for w in SMALL_RUN if not w.startswith("domain=")]
    if method in METHOD_WORDS:
        words = [w for w in words if not w.startswith("method")] + METHOD_WORDS[method]
    scale_key = "local" if method == "dinov2" else "global"
    extra = [f"method.views.{scale_key}.scale=[0.6,1.0]"] if modality == "points" else []
    if method in ("arm", "digpt") and modality != "image2d":
        # composed for digits (2D), so the 3D recipes of method.by_modality do not apply
        extra.append("method.cluster=[2,2,2]")
    config = compose(
        [
            "domain=digits",
            *words,
            *CASES[modality],
            *extra,
            "trainer.max_steps=2",
            "trainer.batch_size=8",
            f"run.dir={run}",
            "trainer.progress=none",
            "data.views={}",
        ],
        config_sources(registry),
    )
    config.domain.name = domain.name
    result = train(config, registry)

    assert result.steps == 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_samples"] == 0
    assert torch.isfinite(torch.tensor(summary["last_metrics"]["loss"]))
    assert summary["last_metrics"]["tokens_per_s"] > 0
    encoder = load_file(str(run / "encoder.safetensors"))
    assert "trunk.cls_token" in encoder
    if method == "dinov2":  # iBOT really masked tokens of this modality
        assert summary["last_metrics"]["masked_fraction"] > 0
