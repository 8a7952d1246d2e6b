"""Collapse signals against hand computations, and their path into metrics, warnings and report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SMALL_RUN, fmcore

from fmcore.collapse import (
    FEATURE_STD,
    CollapseWatch,
    feature_spread,
    loss_vs_mean_predictor,
    spread_warning,
)
from fmcore.modalities.grid import masked_mse
from fmcore.plugins.dinov2.method import teacher_spread
from fmcore.plugins.simclr.method import pair_similarities


def test_feature_spread_is_zero_for_one_point_and_one_for_an_even_spread() -> None:
    same = torch.tensor([[3.0, 4.0]]).repeat(8, 1)
    assert feature_spread(same) == pytest.approx(0.0, abs=1e-6)
    # +-e_i for every axis of R^4: each coordinate is +-1 on 2 of 8 rows, 0 elsewhere, so its
    # sample std is sqrt(2 / 7); times sqrt(4) that is 2 sqrt(2/7) for this even spread.
    axes = torch.cat([torch.eye(4), -torch.eye(4)])
    assert feature_spread(axes) == pytest.approx(2 * math.sqrt(2 / 7), rel=1e-6)
    # Scaling a sample changes nothing: the spread is of directions.
    assert feature_spread(axes * torch.arange(1.0, 9.0).unsqueeze(1)) == pytest.approx(
        feature_spread(axes), rel=1e-6
    )


def test_teacher_spread_on_uniform_and_one_hot_targets() -> None:
    k = 8
    uniform = teacher_spread(torch.full((4, k), 1 / k))
    assert uniform["collapse/teacher_entropy"] == pytest.approx(math.log(k), rel=1e-6)
    assert uniform["collapse/teacher_kl_uniform"] == pytest.approx(0.0, abs=1e-6)
    # every sample on prototype 2: no entropy, and their mean is as far from uniform as can be
    one_prototype = teacher_spread(torch.nn.functional.one_hot(torch.full((4,), 2), k).float())
    assert one_prototype["collapse/teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert one_prototype["collapse/teacher_kl_uniform"] == pytest.approx(math.log(k), rel=1e-5)


def test_pair_similarities_by_hand() -> None:
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    positive, negative = pair_similarities(z1, z2)
    # positives: cos((1,0),(1,1)) = 1/sqrt2, cos((0,1),(0,1)) = 1; negatives: 0 and 1/sqrt2
    assert positive == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert negative == pytest.approx((0 + 1 / math.sqrt(2)) / 2)


def test_collapse_warnings_print_once_per_kind(capsys: pytest.CaptureFixture[str]) -> None:
    watch = CollapseWatch()
    assert spread_warning({FEATURE_STD: 0.5}) == {}
    for step in (10, 20):
        watch.check(step, spread_warning({FEATURE_STD: 0.001}))
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and "step 10" in printed[0] and "collapsing" in printed[0]


@pytest.mark.usefixtures("one_thread")
def test_a_collapsed_simclr_run_warns_and_its_report_draws_the_signals(tmp_path: Path) -> None:
    """lr 0.5 drives SimCLR to one point: every view gets the same features, and the run says so
    while metrics.jsonl and the report carry the signals a user would read."""
    run = tmp_path / "run"
    done = fmcore(
        "train",
        *SMALL_RUN,
        "trainer.max_steps=30",
        "trainer.lr=0.5",
        "trainer.clip_grad=null",
        "trainer.log_every=5",
        f"run.dir={run}",
        cwd=tmp_path,
    )
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    signals = {
        "collapse/feature_std",
        "collapse/positive_similarity",
        "collapse/negative_similarity",
    }
    assert signals <= set(lines[-1])
    assert lines[-1]["collapse/feature_std"] < 0.05
    assert done.stderr.count("features are collapsing") == 1
    fmcore("report", str(run), cwd=tmp_path)
    assert (run / "report" / "collapse.png").is_file()


def test_loss_vs_mean_is_neutral_when_no_token_is_scored() -> None:
    """A batch whose hidden tokens all lie outside the valid region grades nothing: the ratio is
    1.0 (no evidence), not NaN."""
    target = torch.randn(2, 4, 3)
    nothing = torch.zeros(2, 4, dtype=torch.bool)
    loss = masked_mse(torch.zeros_like(target), target, nothing)
    assert loss_vs_mean_predictor(masked_mse, loss, target, nothing) == 1.0
