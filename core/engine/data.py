"""From a domain's sample references to batches: bad samples skipped and counted, resumable order.

The order of samples is a pure function of (seed, epoch, rank), so the data position of a run is
one integer, the number of batches consumed, and a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from fmcore.domain import Domain, Sample
from fmcore.errors import BadSample, NoUsableSamples
from fmcore.method import Batch
from fmcore.transport import stack_samples, transport_problem


@dataclass
class Skipped:
    """A sample that could not be used, with the reason (named file and what went wrong)."""

    message: str


class DomainDataset(Dataset):
    """Decodes a domain's samples; a failure becomes a :class:`Skipped` marker, not a crash."""

    def __init__(self, domain: Domain, refs: Sequence[Any]) -> None:
        self.domain = domain
        self.refs = refs

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> Sample | Skipped:
        ref = self.refs[index]
        try:
            sample = self.domain.load(ref)
        except BadSample as error:
            return Skipped(str(error))
        except (
            Exception
        ) as error:  # an unexpected decoder failure on one file must not end a long run
            return Skipped(f"{ref}: {type(error).__name__}: {error}")
        # A broken contract, not a bad file: it would fail every sample, so it ends the run.
        problem = transport_problem(sample.data, self.domain.float_samples, self.domain.value_range)
        if problem is not None:
            raise TypeError(f"domain '{self.domain.name}': {problem} ({ref})")
        return sample


def collate(items: list[Sample | Skipped]) -> tuple[Batch | None, list[str]]:
    """Stack the good samples of a batch; return the skipped samples' messages beside it."""
    good = [item for item in items if isinstance(item, Sample)]
    skipped = [item.message for item in items if isinstance(item, Skipped)]
    if not good:
        return None, skipped
    batch = Batch(
        data=stack_samples([s.data for s in good]),
        labels=torch.tensor([s.label for s in good], dtype=torch.long),
        meta=[s.meta for s in good],
        valid=_stack_valid(good),
    )
    return batch, skipped


def _stack_valid(samples: list[Sample]) -> Tensor | None:
    """The samples' valid-pixel masks as one (B, 1, *S) uint8 batch (a share of valid area
    would need floats: workers give 0/1 masks); a sample without one is valid everywhere; None
    when no sample has one."""
    if all(s.valid is None for s in samples):
        return None
    return torch.stack(
        [
            torch.ones((1, *s.data.shape[1:]), dtype=torch.uint8)
            if s.valid is None
            else (s.valid >= 0.5).to(torch.uint8)  # a mask given as floats: valid from 0.5
            for s in samples
        ]
    )


class ResumableBatchSampler(Sampler[list[int]]):
    """An endless stream of index batches: epoch after epoch of seeded permutations.

    Each rank takes every ``world_size``-th index of the epoch's permutation (padded by wrapping so
    all ranks get the same count). ``start_batch`` skips batches already consumed by an earlier run.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        shuffle: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.shuffle = shuffle
        self.per_rank = -(-num_samples // world_size)  # ceil

    def _epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        order = (order * (total // self.num_samples + 1))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start_batch * self.batch_size  # samples this rank already consumed
        epoch, offset = divmod(position, self.per_rank)
        pending: list[int] = []
        while True:
            pending.extend(self._epoch_indices(epoch)[offset:])
            epoch, offset = epoch + 1, 0
            while len(pending) >= self.batch_size:
                yield pending[: self.batch_size]
                pending = pending[self.batch_size :]

    def __len__(self) -> int:  # endless; DataLoader only needs a length for progress estimates
        return 2**62


class BatchStream:
    """Pulls collated batches, dropping bad samples; counts what it dropped and reports the first.

    ``batches_consumed`` and ``skipped`` are the data position a checkpoint stores; ``report``
    (None on ranks that stay quiet) receives the first ``messages_shown`` problems.
    """

    def __init__(
        self,
        loader: DataLoader,
        batches_consumed: int,
        skipped: int,
        max_empty_batches: int,
        report: Callable[[str], None] | None,
        messages_shown: int = 10,
    ) -> None:
        self.iterator: Iterator = iter(loader)
        self.batches_consumed = batches_consumed
        self.skipped = skipped
        self.max_empty_batches = max_empty_batches
        self.report = report
        self.messages_shown = messages_shown
        self.first_messages: list[str] = []

    def next(self) -> Batch:
        for _ in range(self.max_empty_batches):
            batch, messages = next(self.iterator)
            self.batches_consumed += 1
            self._count(messages)
            if batch is not None:
                return batch
        raise NoUsableSamples(
            f"no usable sample in {self.max_empty_batches} consecutive batches; first problems:\n  "
            + "\n  ".join(self.first_messages or ["(none reported)"])
        )

    def _count(self, messages: list[str]) -> None:
        for message in messages:
            self.skipped += 1
            if len(self.first_messages) < self.messages_shown:
                self.first_messages.append(message)
                if self.report is not None:
                    self.report(f"skipped bad sample: {message}")


def make_loader(
    dataset: DomainDataset,
    batch_sampler: ResumableBatchSampler,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
