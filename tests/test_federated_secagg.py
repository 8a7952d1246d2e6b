"""Secure aggregation with Flower's SecAgg+: real digit sites, checked against their checkpoints.

The server only sees the sum of the sites' quantized, masked weights; the global weights must
still be the sample-weighted FedAvg of the sites' own saved weights, up to SecAgg+'s quantization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import fmcore
from test_federated import (
    DIGITS_TRAIN,
    FEDERATION,
    global_round,
    rounds_log,
    site_state,
    weighted_average,
)

from fmcore.errors import ConfigError

SITES = ("site-0", "site-1", "site-2")
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**22
MAX_WEIGHT = 1000.0
SECURE = [
    *FEDERATION,
    "federated.sites=3",
    "federated.local_steps=1",
    "federated.secure_aggregation=true",
    f"federated.secagg.clipping_range={CLIPPING_RANGE}",
    f"federated.secagg.quantization_range={QUANTIZATION_RANGE}",
    f"federated.secagg.max_weight={MAX_WEIGHT}",
]


def secagg_tolerance(states: list[dict[str, np.ndarray]], counts: list[int], key: str):
    """SecAgg+'s error bound per entry. Site i sends x_i = r_i * w_i with r_i = n_i / max_weight
    rounded to 1/Q (Q = quantization_range), shifted by the clipping range c and stochastically
    rounded to the grid of step 2c/Q (error < one step). The server divides the sum by sum(r_i):
    |error| < k * 2c/Q / sum(r) from the rounding of k sites, plus the weights' rounding,
    sum(|r_i - n_i/max_weight| * |w_i - mean|) / sum(r) <= (1/2Q) * sum|w_i - mean| / sum(r)."""
    ratio = sum(counts) / MAX_WEIGHT
    mean = weighted_average(states, counts, key)
    spread = sum(np.abs(state[key] - mean) for state in states)
    step = 2 * CLIPPING_RANGE / QUANTIZATION_RANGE
    quantization = len(states) * step / ratio + spread / (2 * QUANTIZATION_RANGE) / ratio
    return quantization + 4 * np.finfo(np.float32).eps * np.abs(mean)  # float32 storage


@pytest.mark.slow
def test_three_digit_sites_average_securely(tmp_path: Path) -> None:
    run = tmp_path / "federation"
    result = fmcore("federate", *SECURE, f"run.dir={run}", cwd=tmp_path, timeout=300)
    assert "finished 2 rounds" in result.stdout
    assert "aggregated securely" in result.stdout
    assert sorted(p.name for p in (run / "rounds").iterdir()) == [
        "round_0001.safetensors",
        "round_0002.safetensors",
    ]
    # An IID split deals the 1437 training digits out in turn: 479 to each site.
    counts = [len(range(i, DIGITS_TRAIN, 3)) for i in range(3)]
    log = rounds_log(run)
    assert [r["round"] for r in log] == [1, 2]
    for record in log:
        assert record["secure_aggregation"] is True
        assert record["contributors"] == 3 and record["failures"] == []
        assert record["site_examples"] == dict(zip(SITES, counts, strict=True))

    states = [site_state(run, site) for site in SITES]
    final = global_round(run, 2)
    assert set(final) == {"shared", "domain:digits:image2d"}
    assert set().union(*final.values()) == set(states[0])  # simclr keeps nothing local
    errors = []  # per entry, the largest deviation from the numpy FedAvg
    for group in final.values():
        for key, value in group.items():
            expected = weighted_average(states, counts, key)
            error = np.abs(value - expected)
            assert np.all(error <= secagg_tolerance(states, counts, key)), key
            errors.append(error.max())
    # The sum really went through SecAgg+'s quantization (the plain path is exact to ~1e-7)
    # and its error is far below how much the sites differ.
    apart = max(np.abs(states[0][key] - states[1][key]).max() for key in states[0])
    print(f"largest error {max(errors):.3g}, sites apart by up to {apart:.3g}")
    assert 1e-7 < max(errors) < apart / 20


@pytest.mark.slow
def test_a_site_that_drops_out_is_unmasked_from_its_shares(tmp_path: Path) -> None:
    """site-2 fails while training, after it shared its keys: the other sites' shares of its
    secret let the server remove its masks, and the round averages site-0 and site-1."""
    run = tmp_path / "federation"
    fmcore(
        "federate",
        *SECURE,
        "federated.rounds=1",
        f"federated.site_data=[null, null, {tmp_path / 'nowhere'}]",
        f"run.dir={run}",
        cwd=tmp_path,
        timeout=300,
    )
    (record,) = rounds_log(run)
    assert record["contributors"] == 2
    assert record["failures"] == ["site-2: sent no masked update"]
    assert record["errors"] == ["ConfigError at the site; the details stay in its log"]
    counts = [len(range(i, DIGITS_TRAIN, 2)) for i in range(2)]  # site-2 has its own data
    assert record["site_examples"] == dict(zip(SITES[:2], counts, strict=True))
    states = [site_state(run, site) for site in SITES[:2]]
    for group in global_round(run, 1).values():
        for key, value in group.items():
            error = np.abs(value - weighted_average(states, counts, key))
            assert np.all(error <= secagg_tolerance(states, counts, key)), key


@pytest.mark.slow
def test_a_round_with_too_few_masked_updates_keeps_the_model_and_counts(tmp_path: Path) -> None:
    """As on the plain server: two masked updates where federated.min_sites=3 leave the model as
    it was, the round is logged without a file, and federated.max_failed_rounds stops it."""
    run = tmp_path / "federation"
    result = fmcore(
        "federate",
        *SECURE,
        "federated.min_sites=3",
        "federated.max_failed_rounds=1",
        f"federated.site_data=[null, null, {tmp_path / 'nowhere'}]",
        f"run.dir={run}",
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert result.returncode == 2
    assert "1 rounds in a row (up to round 1) got fewer than federated.min_sites=3" in (
        result.stderr
    )
    assert not list((run / "rounds").glob("round_*"))
    (record,) = rounds_log(run)
    assert (record["round"], record["contributors"], record["checkpoint"]) == (1, 2, None)
    assert record["failures"] == ["site-2: sent no masked update"]


def test_a_mixed_domain_federation_is_refused_before_it_starts(tmp_path: Path) -> None:
    from fmcore.federated.federation_config import compose_federation, federation_words
    from fmcore.federated.simulation import simulate
    from fmcore.plugin_manager import registry

    words = federation_words(
        [
            *SECURE,
            "federated.site_domains=[digits, radiology, null]",
            f"run.dir={tmp_path / 'federation'}",
        ]
    )
    with pytest.raises(ConfigError, match="one flat vector") as refused:
        simulate(compose_federation(words, registry()), words)
    assert "digits, radiology" in str(refused.value)
    assert not (tmp_path / "federation").exists()


def test_sites_of_two_domains_are_refused_when_they_answer() -> None:
    """In deployment a SuperNode names its own domain: the server refuses after the query."""
    from fmcore.federated.secure_server import check_single_domain
    from fmcore.federated.sites import SiteInfo

    digits = ("shared", "domain:digits:image2d")
    check_single_domain({1: SiteInfo(1, "a", digits), 2: SiteInfo(2, "b", digits)})
    ct = ("shared", "domain:radiology:volume3d")
    with pytest.raises(ConfigError, match="one flat vector"):
        check_single_domain({1: SiteInfo(1, "a", digits), 2: SiteInfo(2, "b", ct)})


@pytest.mark.parametrize(
    ("word", "reason"),
    [
        ("federated=fedprox", "FedAvg only"),
        ("federated.dp.clipping=fixed", "federated.dp"),
        ("federated.sites=1", "sites >= 2"),
        ("federated.secagg.num_shares=2", "federated.secagg"),
    ],
)
def test_settings_secure_aggregation_cannot_honour_are_refused(word: str, reason: str) -> None:
    from fmcore.federated.federation_config import compose_federation, federation_words
    from fmcore.federated.secure_server import check_secure_config
    from fmcore.plugin_manager import registry

    words = federation_words([*SECURE, word])
    with pytest.raises(ConfigError, match=reason):
        check_secure_config(compose_federation(words, registry()))


def test_a_site_refuses_to_send_what_the_secure_sum_would_corrupt() -> None:
    from fmcore.federated.secure_client import outgoing_problem

    received = {"shared": {"w": np.zeros(3, np.float32)}}
    good = {"shared": {"w": np.array([0.5, -1.0, 2.0], np.float32)}}
    assert outgoing_problem(good, received, 500, CLIPPING_RANGE, MAX_WEIGHT) is None
    nan = {"shared": {"w": np.array([0.5, np.nan, 2.0], np.float32)}}
    assert "NaN" in str(outgoing_problem(nan, received, 500, CLIPPING_RANGE, MAX_WEIGHT))
    assert "max_weight" in str(outgoing_problem(good, received, 1500, CLIPPING_RANGE, MAX_WEIGHT))
    big = {"shared": {"w": np.array([0.5, -20.0, 2.0], np.float32)}}
    assert "clipping_range" in str(outgoing_problem(big, received, 500, CLIPPING_RANGE, 1000.0))
