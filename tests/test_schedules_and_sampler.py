"""Schedules against their formulas; the resumable batch order against an uninterrupted one."""

from __future__ import annotations

import math
from itertools import islice, pairwise

from fmcore.engine.data import ResumableBatchSampler
from fmcore.engine.schedules import warmup_cosine


def test_warmup_is_linear_then_cosine_reaches_the_end_value() -> None:
    values = [warmup_cosine(s, 110, start=1.0, end=0.1, warmup_steps=10) for s in range(111)]
    assert values[0] == 0.0 and math.isclose(values[5], 0.5)
    assert math.isclose(values[10], 1.0)
    # halfway through the cosine part the value is the mean of start and end
    assert math.isclose(values[60], 0.55)
    assert math.isclose(values[110], 0.1)
    assert all(a >= b for a, b in pairwise(values[10:]))


def test_schedule_may_rise_as_ema_momentum_does() -> None:
    assert math.isclose(warmup_cosine(0, 100, 0.992, 1.0), 0.992)
    assert math.isclose(warmup_cosine(100, 100, 0.992, 1.0), 1.0)
    assert math.isclose(warmup_cosine(50, 100, 0.992, 1.0), 0.996)


def test_resumed_sampler_continues_the_same_stream_across_epochs() -> None:
    full = list(islice(iter(ResumableBatchSampler(10, 4, seed=3)), 9))
    resumed = list(islice(iter(ResumableBatchSampler(10, 4, seed=3, start_batch=4)), 5))
    assert resumed == full[4:]


def test_each_epoch_is_a_permutation_and_ranks_split_it() -> None:
    stream = [i for batch in islice(iter(ResumableBatchSampler(12, 3, seed=1)), 4) for i in batch]
    assert sorted(stream) == list(range(12))
    rank_streams = [
        [i for batch in islice(iter(ResumableBatchSampler(12, 3, 1, rank, 2)), 2) for i in batch]
        for rank in range(2)
    ]
    assert sorted(rank_streams[0] + rank_streams[1]) == list(range(12))
