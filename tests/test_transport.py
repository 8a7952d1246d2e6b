"""The transport rule: workers hand over integers, the device makes the floats (issue 25).

Every built-in domain's worker output is checked through a real data-loader worker; the
device-side conversion and views are compared with a float reference computed on the CPU the
way the workers used to (decoded bytes / 255 in float32). Tolerance: none for the conversion
(float32 division is correctly rounded, so x / 255 on any device is the float reference), and
1e-6 absolute for views and the encoder input on an accelerator, whose interpolation and
arithmetic may round differently from the CPU's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fmcore.config import compose, config_sources
from fmcore.domain import Domain, Sample
from fmcore.engine.data import DomainDataset, ResumableBatchSampler, collate, make_loader
from fmcore.factory import build_domain
from fmcore.modalities.base import ViewSpec
from fmcore.plugin_manager import registry
from fmcore.transport import quantize, stack_samples, unit_float
from fmcore.view_maker import ViewMaker

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VIEW_TOLERANCE = 0 if DEVICE.type == "cpu" else 1e-6

# Every built-in domain, in each mode whose samples differ in kind; the embedded samples.
CASES = {
    "digits": [],
    "pathology": ["data.tile_size=64", "data.size=[64,64]"],
    "ophthalmology": [],
    "ophthalmology-oct": ["data.mode=oct"],
    "radiology": [],
    "radiology-xray": ["data.mode=xray"],
    "video": [],
    "points": [],
    "robotics": [],
}
# Floats by nature (point coordinates), or preprocessed in float by the worker until their
# intensity scaling moves to the device (docs/architecture.md, "The transport rule").
FLOAT_SAMPLES = {"points", "radiology", "radiology-xray", "ophthalmology-oct"}


def domain_for(case: str) -> Domain:
    name = case.split("-")[0]
    words = [f"domain={name}", *CASES[case]]
    return build_domain(compose(words, config_sources(registry())), registry())


def test_the_cases_cover_every_built_in_domain() -> None:
    built_in = {n for n, c in registry().domains.items() if c.__module__.startswith("fmcore.")}
    assert built_in == {case.split("-")[0] for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_worker_hands_over_integers_except_where_floats_are_the_data(case: str) -> None:
    domain = domain_for(case)
    refs = domain.index("train")
    sampler = ResumableBatchSampler(len(refs), 2, seed=0, shuffle=False)
    loader = make_loader(DomainDataset(domain, refs), sampler, num_workers=1, pin_memory=False)
    batch, skipped = next(iter(loader))  # collated in a worker process
    assert skipped == []
    assert batch.data.is_floating_point() == (case in FLOAT_SAMPLES), batch.data.dtype
    assert domain.float_samples == (case in FLOAT_SAMPLES)
    if batch.valid is not None:
        assert batch.valid.dtype == torch.uint8
    unit = domain.to_unit(batch.data)
    assert unit.dtype == torch.float32
    if not domain.float_samples:
        assert float(unit.min()) >= 0 and float(unit.max()) <= 1
    del loader


def test_the_conversion_is_the_float_reference_exactly() -> None:
    levels = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    reference = torch.from_numpy(np.arange(256, dtype=np.float64).reshape(1, 16, 16) / 255)
    assert torch.equal(unit_float(levels.to(DEVICE)).cpu(), reference.float())
    deep = torch.tensor([0, 1, 40000, 65535], dtype=torch.uint16)
    expected = torch.tensor([0, 1 / 65535, 40000 / 65535, 1.0], dtype=torch.float64)
    assert torch.equal(unit_float(deep.to(DEVICE)).cpu(), expected.float())
    # A signed type with a range: a CT window of -1000..1000 HU, clamped outside it.
    hounsfield = torch.tensor([-2000, -1000, 0, 500, 3000], dtype=torch.int16)
    window = unit_float(hounsfield.to(DEVICE), (-1000.0, 1000.0)).cpu()
    assert torch.equal(window, torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0]))
    points = torch.randn(8, 3, dtype=torch.float64)
    assert torch.equal(unit_float(points), points.float())  # floats pass as floats
    with pytest.raises(TypeError, match="value_range"):
        unit_float(hounsfield)  # a signed type has no full scale


def test_an_eight_and_a_sixteen_bit_sample_share_a_batch_at_the_same_values() -> None:
    eight = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    sixteen = quantize(torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)))
    batch = stack_samples([eight, sixteen])
    assert batch.dtype == torch.uint16
    assert torch.equal(unit_float(batch[0]), unit_float(eight))  # x 257 / 65535 == x / 255
    assert torch.equal(batch[1], sixteen)


def test_quantize_keeps_sixteen_bits() -> None:
    values = torch.rand(1000, generator=torch.Generator().manual_seed(1))
    assert float((unit_float(quantize(values)) - values).abs().max()) <= 0.5 / 65535 + 1e-7
    assert torch.equal(quantize(torch.tensor([-0.5, 0.0, 1.0, 2.0]), torch.uint8).long(),
                       torch.tensor([0, 0, 255, 255]))  # fmt: skip


def test_device_views_of_uint8_tiles_are_the_float_reference_views() -> None:
    """Real H&E tiles of the embedded slide: the views the device makes of the uint8 batch
    (conversion, crops, flips, colour jitter, the domain's dihedral and HED steps,
    normalisation) equal the views of the float tiles the workers used to hand over."""
    domain = domain_for("pathology")
    refs = domain.index("train")
    batch, _ = collate([DomainDataset(domain, refs)[i] for i in range(4)])
    assert batch.data.dtype == torch.uint8 and batch.data.shape == (4, 3, 64, 64)
    float_tiles = torch.from_numpy(batch.data.numpy().astype(np.float64) / 255).float()
    modality = registry().modality("image2d")
    spec = ViewSpec(count=2, size=0.5, scale=(0.3, 1.0), jitter=1.0, grayscale=0.2, blur=0.5)

    def views(data: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        maker = ViewMaker(
            modality, (64, 64), (8, 8), domain.view_steps(), domain.normalize, {}, domain.to_unit
        )
        generator = torch.Generator(device=device).manual_seed(7)
        return [view.cpu() for view in maker(data.to(device), spec, generator)]

    reference = views(float_tiles, DEVICE)  # the same random draws on the same device
    for view, expected in zip(views(batch.data, DEVICE), reference, strict=True):
        assert view.shape == (4, 3, 32, 32)
        torch.testing.assert_close(view, expected, rtol=0, atol=VIEW_TOLERANCE)
    # Evaluation's input (no augmentation) on the device against the CPU float reference.
    on_device = domain.encoder_input(batch.data.to(DEVICE)).cpu()
    torch.testing.assert_close(
        on_device, domain.normalize(float_tiles), rtol=0, atol=max(VIEW_TOLERANCE, 1e-6)
    )


class FloatDigits(Domain):
    """A domain that breaks the rule: floats from a domain that says nothing of float data."""

    name = "float_digits"
    modality = "image2d"

    def find_samples(self, split: str) -> list[int]:
        return [0, 1]

    def load(self, ref: int) -> Sample:
        return Sample(torch.rand(1, 16, 16))


def test_a_domain_that_hands_over_floats_is_stopped_with_the_rule(tmp_path) -> None:
    config = compose(["domain=digits"], config_sources(registry()))
    domain = FloatDigits(config.data, tmp_path)
    loader = DataLoader(DomainDataset(domain, [0, 1]), batch_size=2, collate_fn=collate)
    with pytest.raises(TypeError, match=r"float_digits.*float32 data: workers hand over"):
        next(iter(loader))
