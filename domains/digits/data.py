"""The digits domain: 1,797 real 8x8 grayscale digits shipped inside scikit-learn (no download).

A digit's pixels are counts 0-16. Upsampled bilinearly to ``data.size``, they are handed over as
int16 sixteenths of a count (0-256: exact at 16x16, where every upsampled value is a multiple of
1/16; at other sizes within 1/512 of the float value), so the device's ``value_range`` map gives
the float upsample of counts / 16 (:mod:`fmcore.transport`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from fmcore.domain import Domain, Sample
from fmcore.errors import ConfigError

VALIDATION_EVERY = 5  # every 5th digit is held out: a fixed 80/20 split with all classes in both
FULL_SCALE = 16 * 16  # sixteenths of the top count, 16


class Digits(Domain):
    name = "digits"
    modality = "image2d"
    partition_keys = ("label",)
    splits = ("train", "val", "all")
    requires = ("sklearn",)
    value_range = (0.0, float(FULL_SCALE))

    @cached_property
    def _digits(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        if self.data.get("root"):
            raise ConfigError(
                "domain=digits reads scikit-learn's bundled digits; data.root is not used: unset it"
            )
        bunch = load_digits()
        return bunch.images.astype(np.float32), bunch.target.astype(np.int64)

    def find_samples(self, split: str) -> Sequence[int]:
        count = len(self._digits[1])
        if split == "all":
            return list(range(count))
        held_out = split == "val"
        return [i for i in range(count) if (i % VALIDATION_EVERY == 0) == held_out]

    def partition_key(self, ref: int, by: str) -> int:
        return int(self._digits[1][ref])  # by label, the only grouping digits offers

    def load(self, ref: int) -> Sample:
        images, labels = self._digits
        image = torch.from_numpy(images[ref]).view(1, 1, 8, 8)
        image = F.interpolate(image, size=self.sample_size, mode="bilinear", align_corners=False)
        sixteenths = image[0].mul(FULL_SCALE / 16).round_().clamp_(0, FULL_SCALE)
        return Sample(
            data=sixteenths.to(torch.int16), label=int(labels[ref]), meta={"index": int(ref)}
        )
