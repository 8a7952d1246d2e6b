"""Periodic evaluation during training: kNN on frozen features of the current encoder.

``eval.every_steps=N`` with ``eval=knn`` (the protocol settings ``fmcore eval`` uses: splits, k,
temperature, voting) makes rank 0 score the method's exported encoder (DINOv2's EMA teacher)
every N steps and at the last step, and log the metrics as their own ``metrics.jsonl`` line,
``{"step": N, "eval/knn_accuracy": ...}``. Evaluating leaves training as it was: the random
number generators, the encoder's train mode and its token count are restored, so a run with
periodic evaluation trains exactly the weights of the same run without it.

The engine knows nothing of evaluation: ``fmcore train`` (and a federated site) hand
:func:`periodic_evaluation` to :func:`fmcore.engine.trainer.train` as its ``evaluation`` factory.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fmcore.domain import Domain
from fmcore.encoder import Encoder
from fmcore.engine.progress import MetricsLog
from fmcore.errors import BadSample, ConfigError, FmcoreError
from fmcore.eval.knn import KnnProtocol

PROTOCOL = "knn"
METRIC_PREFIX = f"eval/{PROTOCOL}_"


@contextlib.contextmanager
def training_state_kept(encoder: Encoder, device: torch.device) -> Iterator[None]:
    """Restore the RNG streams and the encoder's token count (the engine's tokens/s) on exit.

    Feature extraction draws from the global generator (a DataLoader seeds its workers from it).
    """
    tokens = encoder.tokens_processed
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        encoder.tokens_processed = tokens


class PeriodicEvaluation:
    """Scores the encoder every ``every_steps`` steps and after the last step."""

    def __init__(
        self,
        every_steps: int,
        protocol: KnnProtocol,
        domain: Domain,
        device: torch.device,
        num_workers: int,
        message: Callable[[str], None],
    ) -> None:
        self.every_steps = every_steps
        self.protocol = protocol
        self.domain = domain
        self.device = device
        self.num_workers = num_workers
        self.message = message
        self.stopped = False

    def check_splits(self) -> None:
        """Fail before training when a split to evaluate is missing, empty or unlabelled."""
        context = f"eval.every_steps={self.every_steps} (0 trains without periodic evaluation)"
        splits = self.protocol.features
        for split in (splits.train_split, splits.test_split):
            try:
                refs = self.domain.index(split)
            except FmcoreError as error:
                raise ConfigError(f"{context}: {error}") from error
            label = _first_label(self.domain, refs)
            if label is None:
                raise ConfigError(
                    f"{context}: split '{split}' of domain '{self.domain.name}' has no readable"
                    " sample"
                )
            if label < 0:
                raise ConfigError(
                    f"{context}: split '{split}' of domain '{self.domain.name}' has no labels,"
                    " and kNN evaluation needs labelled samples"
                )

    def due(self, step: int, max_steps: int) -> bool:
        """Whether to evaluate after ``step`` steps are done."""
        return not self.stopped and (step % self.every_steps == 0 or step == max_steps)

    def run(self, encoder: Encoder, step: int, log: MetricsLog) -> dict[str, float]:
        """Evaluate, log one line and return its metrics. A failure (an unreadable sample) ends
        periodic evaluation for this run with one message (and returns {}); training goes on."""
        try:
            metrics = self.evaluate(encoder)
        except FmcoreError as error:
            self.stopped = True
            print(
                f"periodic evaluation stopped at step {step}: {error}", file=sys.stderr, flush=True
            )
            return {}
        logged = {METRIC_PREFIX + name: value for name, value in metrics.items()}
        log.write({"step": step, **logged})
        self.message(
            f"step {step}: kNN accuracy {metrics['accuracy']:.4f}"
            f" on {self.protocol.features.test_split} of {self.domain.name}"
        )
        return logged

    def evaluate(self, encoder: Encoder) -> dict[str, float]:
        """kNN metrics of ``encoder``'s frozen features, training state left as it was."""
        with training_state_kept(encoder, self.device):
            return self.protocol.metrics(encoder, self.domain, self.device, self.num_workers)


def periodic_evaluation(
    config: DictConfig, domain: Domain, device: torch.device, message: Callable[[str], None]
) -> PeriodicEvaluation | None:
    """The run's periodic evaluation with its splits checked, or None when it is off."""
    # A config saved before periodic evaluation existed has no eval section: off. The value's
    # type and sign are checked when the config is composed (EvalSection).
    every_steps = OmegaConf.select(config, "eval.every_steps", default=0)
    if every_steps == 0:
        return None
    protocol = OmegaConf.select(config, "eval.name")
    if protocol is None:
        raise ConfigError(
            f"eval.every_steps={every_steps} evaluates with kNN: add eval={PROTOCOL} to the"
            " command line (its settings, such as eval.k, may then be overridden)"
        )
    if protocol != PROTOCOL:
        raise ConfigError(
            f"periodic evaluation (eval.every_steps) runs kNN only, not eval={protocol}:"
            f" choose eval={PROTOCOL}, or run fmcore eval eval={protocol} after training"
        )
    evaluation = PeriodicEvaluation(
        every_steps,
        KnnProtocol.for_run(config),
        domain,
        device,
        int(config.trainer.num_workers),
        message,
    )
    evaluation.check_splits()
    return evaluation


def _first_label(domain: Domain, refs: Sequence[Any]) -> int | None:
    """The label of the split's first readable sample; None when no sample is readable."""
    for ref in refs:
        try:
            return domain.load(ref).label
        except BadSample:
            continue
    return None
