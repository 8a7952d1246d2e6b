"""The digits domain: 1,797 real 8x8 grayscale digits shipped inside scikit-learn (no download)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from fmcore.domain import Domain, Sample
from fmcore.errors import ConfigError

VALIDATION_EVERY = 5  # every 5th digit is held out: a fixed 80/20 split with all classes in both


class Digits(Domain):
    name = "digits"
    modality = "image2d"
    partition_keys = ("label",)
    splits = ("train", "val", "all")
    requires = ("sklearn",)

    @cached_property
    def _digits(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        if self.data.get("root"):
            raise ConfigError(
                "domain=digits reads scikit-learn's bundled digits; data.root is not used: unset it"
            )
        bunch = load_digits()
        return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)

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
        return Sample(data=image[0].clamp(0, 1), label=int(labels[ref]), meta={"index": int(ref)})
