"""Progress reporting: a bar with throughput and ETA on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from fmcore.errors import ConfigError


def _format(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Shows training progress; ``mode`` is bar, lines, none or auto (bar only on a terminal)."""

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        mode: str,
        log_every: int,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "lines"
        if mode not in ("bar", "lines", "none"):
            raise ConfigError(f"trainer.progress must be auto, bar, lines or none, not '{mode}'")
        self.mode = mode
        self.total = total_steps
        self.start_step = start_step
        self.log_every = max(1, log_every)
        self.started = time.perf_counter()
        self.bar = (
            tqdm(
                total=total_steps,
                initial=start_step,
                file=self.stream,
                unit="step",
                dynamic_ncols=True,
            )
            if mode == "bar"
            else None
        )

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Report the end of ``step`` (0-based) with its metrics."""
        shown = {
            k: metrics[k] for k in ("loss", "lr", "samples_per_s", "tokens_per_s") if k in metrics
        }
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: _format(v) for k, v in shown.items()}, refresh=False)
            return
        done = step + 1
        if self.mode == "lines" and (done % self.log_every == 0 or done == self.total):
            elapsed = time.perf_counter() - self.started
            rate = (done - self.start_step) / max(elapsed, 1e-9)
            eta = timedelta(seconds=round((self.total - done) / max(rate, 1e-9)))
            fields = " ".join(f"{k} {_format(v)}" for k, v in shown.items())
            print(f"step {done}/{self.total} {fields} eta {eta}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        elif self.mode != "none":
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _step(line: str) -> float:
    """A metrics line's step; a line cut short by a crash counts as past any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class MetricsLog:
    """metrics.jsonl, one JSON object per logged step; resuming drops lines past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _step(line) <= resume_step]
            path.write_text("".join(f"{line}\n" for line in kept))
        elif resume_step is None:
            path.write_text("")

    def write(self, record: dict[str, float]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
