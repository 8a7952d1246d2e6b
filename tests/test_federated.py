"""Federated pretraining in Flower's simulation runtime: real sites training with the engine.

Every check of the global weights is made against the sites' own saved checkpoints, averaged
here with numpy, not against the server's code path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN, fmcore
from omegaconf import OmegaConf
from safetensors.numpy import load_file

from fmcore.engine.checkpoint import CheckpointStore

FEDERATION = [
    *SMALL_RUN,
    "trainer.warmup_steps=1",
    "trainer.progress=none",
    "federated.sites=2",
    "federated.rounds=2",
    "federated.local_steps=2",
]
DIGITS_TRAIN = 1797 - len(range(0, 1797, 5))  # scikit-learn's digits, every 5th held out


def global_round(run: Path, server_round: int) -> dict[str, dict[str, np.ndarray]]:
    groups: dict[str, dict[str, np.ndarray]] = {}
    path = run / "rounds" / f"round_{server_round:04d}.safetensors"
    for name, value in load_file(str(path)).items():
        group, key = name.split("/", 1)
        groups.setdefault(group, {})[key] = value
    return groups


def site_state(run: Path, site: str) -> dict[str, np.ndarray]:
    checkpoint = CheckpointStore(run / "sites" / site / "checkpoints").latest()
    assert checkpoint is not None
    return {k: v.float().numpy() for k, v in checkpoint.model_state().items()}


def rounds_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]


def assert_only_weights_metrics_and_config(
    records: dict, state: dict[str, np.ndarray], extra_metrics: Iterable[str] = ()
) -> None:
    """A sent message (as fmcore.federated.audit.describe writes it) holds model entries of the
    site's state, the round metrics and the site's name and update dtype: nothing else."""
    for name, record in records.items():
        if record["type"] == "arrays":
            for key, entry in record["entries"].items():
                assert entry["shape"] == list(state[key].shape), (name, key)
        elif record["type"] == "metrics":
            allowed = {"num-examples", "loss", "train-seconds", "local-steps", *extra_metrics}
            assert set(record["values"]) <= allowed
        else:
            assert record["type"] == "config"
            assert set(record["values"]) <= {"name", "update-dtype"}
            assert not any("/" in str(v) for v in record["values"].values())


def weighted_average(states: list[dict[str, np.ndarray]], weights: list[float], key: str):
    return sum(w * s[key] for s, w in zip(states, weights, strict=True)) / sum(weights)


@pytest.mark.slow
def test_two_digit_sites_average_their_updates_and_send_only_weights(tmp_path: Path) -> None:
    run = tmp_path / "federation"
    result = fmcore(
        "federate",
        *FEDERATION,
        "federated.audit=true",
        "eval=knn",
        "federated.evaluate_every=2",
        f"run.dir={run}",
        cwd=tmp_path,
        timeout=300,
    )
    assert "finished 2 rounds" in result.stdout
    saved = OmegaConf.load(run / "config.yaml")  # the engine schedule the sites really ran
    assert saved.trainer.max_steps == 4 and saved.federated.rounds == 2
    site_saved = OmegaConf.load(run / "sites" / "site-0" / "config.yaml")
    assert site_saved.trainer.max_steps == 4
    assert sorted(p.name for p in (run / "rounds").iterdir()) == [
        "round_0001.safetensors",
        "round_0002.safetensors",
    ]

    # FedAvg: the global weights after round 2 are the sites' round-2 weights averaged by their
    # number of training samples (an IID split deals the 1437 digits out in turn: 719 and 718).
    states = [site_state(run, "site-0"), site_state(run, "site-1")]
    weights = [len(range(0, DIGITS_TRAIN, 2)), len(range(1, DIGITS_TRAIN, 2))]
    final = global_round(run, 2)
    assert set(final) == {"shared", "domain:digits:image2d"}
    trunk = [k for k in final["shared"] if ".trunk." in f".{k}"]
    assert trunk and len(trunk) == len(final["shared"])
    for group in final.values():
        for key, value in group.items():
            expected = weighted_average(states, weights, key)
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(states[0][trunk[0]], states[1][trunk[0]])  # the sites did differ

    log = rounds_log(run)
    assert [r["round"] for r in log] == [1, 2]
    entries = [v for group in final.values() for v in group.values()]
    floats = sum(v.size for v in entries)
    for record in log:
        assert record["failures"] == [] and record["rejected"] == []
        assert record["site_examples"] == {"site-0": weights[0], "site-1": weights[1]}
        for sent in record["bytes_up"].values():  # float32 values plus a .npy header per entry
            assert 4 * floats < sent <= 4 * floats + 256 * len(entries)
        assert record["wall_seconds"] >= max(record["site_train_seconds"].values())

    # Round 2 scored the global encoder with kNN at both sites; both hold all of digits' val
    # split, so they agree with each other and with the average.
    assert "evaluation" not in log[0]
    evaluation = log[1]["evaluation"]
    per_site = evaluation["sites"]
    assert per_site["site-0"] == per_site["site-1"] and evaluation["failures"] == []
    assert per_site["site-0"]["num-examples"] == 1797 - DIGITS_TRAIN
    for name, value in evaluation["metrics"].items():
        assert value == pytest.approx(per_site["site-0"][name])
    assert evaluation["metrics"]["accuracy"] > 0.2  # chance is 0.1

    # Privacy: everything a site sent is a model entry of the shared/domain scope, a metric or
    # one of two config values. No sample tensors, labels or paths cross the boundary.
    for site, state in zip(("site-0", "site-1"), states, strict=True):
        lines = [
            json.loads(x)
            for x in (run / "sites" / site / "outgoing.jsonl").read_text().split("\n")
            if x
        ]
        assert [line["message_type"] for line in lines] == ["query", "train", "train", "evaluate"]
        for line in lines:
            assert_only_weights_metrics_and_config(line["records"], state, evaluation["metrics"])
            config = [r["values"] for r in line["records"].values() if r["type"] == "config"]
            assert config and all(values["name"] == site for values in config)


def record_outgoing(path, message, context, call_next):
    """Outermost mod: writes down every reply exactly as it leaves the site, errors included."""
    from fmcore.federated.audit import describe

    reply = call_next(message, context)
    line = {"site": context.node_config["partition-id"], "type": message.metadata.message_type}
    line["error" if reply.has_error() else "records"] = (
        reply.error.reason if reply.has_error() else describe(reply.content)
    )
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    return reply


def poison_site_1(message, context, call_next):
    """An adversarial site: site-1's training updates carry a NaN."""
    from flwr.app import Array

    reply = call_next(message, context)
    if message.metadata.message_type == "train" and context.node_config["partition-id"] == 1:
        record = reply.content["shared"]
        key = next(iter(record))
        value = record[key].numpy().copy()
        value.flat[0] = np.nan
        record[key] = Array(value)
    return reply


def assert_round_is_the_weighted_average(run: Path) -> dict[str, dict[str, np.ndarray]]:
    """Round 1 of a 2-site digits federation: every group is the sample-weighted average of
    the two sites' states; returns the round's groups."""
    states = [site_state(run, "site-0"), site_state(run, "site-1")]
    weights = [len(range(0, DIGITS_TRAIN, 2)), len(range(1, DIGITS_TRAIN, 2))]
    final = global_round(run, 1)
    assert set(final) == {"shared", "domain:digits:image2d"}
    assert all(".trunk." in f".{key}" for key in final["shared"])
    for group in final.values():
        for key, value in group.items():
            expected = weighted_average(states, weights, key)
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    return final


@pytest.mark.slow
def test_a_mamba_r_trunk_federates_by_the_same_scopes(tmp_path: Path) -> None:
    """Scopes follow the encoder's layout, not the trunk's kind: a Mamba-R trunk (scan
    parameters, registers, the recycling neck) is shared and averaged like the ViT."""
    run = tmp_path / "federation"
    mamba = ["encoder.trunk=mamba", "encoder.num_registers=2", "federated.rounds=1"]
    fmcore("federate", *FEDERATION, *mamba, f"run.dir={run}", cwd=tmp_path, timeout=300)
    shared = assert_round_is_the_weighted_average(run)["shared"]
    assert {"encoder.trunk.reg_token", "encoder.trunk.neck.weight"} <= set(shared)
    assert any(key.endswith("scan.A_log") for key in shared)


@pytest.mark.slow
def test_an_autoregressive_method_federates_its_trunk_and_keeps_its_head_per_domain(
    tmp_path: Path,
) -> None:
    """AIM under prefix-causal masks: the trunk is averaged across sites, the pixel head (whose
    output is the modality's patch size) with the tokenizer in the domain's group."""
    run = tmp_path / "federation"
    aim = ["method=aim_small", "method.head.width=32", "method.head.depth=1"]
    words = [w for w in FEDERATION if not w.startswith("method")]
    fmcore("federate", *words, *aim, "federated.rounds=1", f"run.dir={run}", cwd=tmp_path)
    final = assert_round_is_the_weighted_average(run)
    domain = final["domain:digits:image2d"]
    assert {"head.proj_out.weight", "encoder.tokenizer.proj.weight"} <= set(domain)


@pytest.mark.slow
def test_a_failing_site_and_a_poisoned_update_do_not_stop_the_rounds(tmp_path: Path) -> None:
    """Three sites: site-2 is misconfigured and fails every round, site-1 sends NaN. Each round
    aggregates site-0 alone, logs both with their names, and the federation finishes."""
    import ray.cloudpickle

    from fmcore.federated.federation_config import compose_federation, federation_words
    from fmcore.federated.simulation import simulate
    from fmcore.plugin_manager import registry

    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    run = tmp_path / "federation"
    words = federation_words(
        [
            *FEDERATION,
            "federated.sites=3",
            f"federated.site_data=[null, null, {tmp_path / 'nowhere'}]",
            f"run.dir={run}",
        ]
    )
    sent = tmp_path / "sent.jsonl"
    mods = [functools.partial(record_outgoing, sent), poison_site_1]
    result = simulate(compose_federation(words, registry()), words, mods)
    assert result.rounds == 2

    log = rounds_log(run)
    for record in log:
        assert record["contributors"] == 1
        # Only the exception's class crosses: its message names the site's data root.
        assert record["failures"] == [
            "site-2: ConfigError at the site; the details stay in its log"
        ]
        assert len(record["rejected"]) == 1 and record["rejected"][0].startswith("site-1: ")
        assert "NaN" in record["rejected"][0]
    # What left the sites (seen outside fmcore's ClientApp, errors included): model entries of
    # the shared and domain groups, metrics and two config values; no path, sample or label.
    site_0 = site_state(run, "site-0")
    lines = [json.loads(line) for line in sent.read_text().splitlines()]
    assert {line["type"] for line in lines} == {"query", "train"}
    assert sum("error" in line for line in lines) == 2  # site-2, both rounds
    for line in lines:
        assert str(tmp_path) not in json.dumps(line)
        assert_only_weights_metrics_and_config(line.get("records", {}), site_0)

    # FedAvg of one update is that update: the global weights are site-0's own.
    for group in global_round(run, 2).values():
        for key, value in group.items():
            np.testing.assert_allclose(value, site_0[key], rtol=1e-6, atol=1e-7)
            assert np.isfinite(value).all()


@pytest.mark.slow
def test_a_digits_site_and_a_ct_site_share_one_trunk(tmp_path: Path) -> None:
    """Two modalities in one federation: the trunk averages across both sites, each domain's
    tokenizer and heads stay with (and are averaged only among) the sites of that domain."""
    run = tmp_path / "federation"
    result = fmcore(
        "federate",
        *FEDERATION,
        "federated.rounds=1",
        "federated.site_domains=[digits, radiology]",
        "federated.site_overrides=[[], [trainer.batch_size=2]]",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
        timeout=400,
    )
    assert "finished 1 rounds" in result.stdout
    final = global_round(run, 1)
    assert set(final) == {"shared", "domain:digits:image2d", "domain:radiology:volume3d"}
    digits, ct = site_state(run, "site-0"), site_state(run, "site-1")
    for key, value in final["domain:radiology:volume3d"].items():
        np.testing.assert_array_equal(value, ct[key])
    for key, value in final["domain:digits:image2d"].items():
        np.testing.assert_array_equal(value, digits[key])
    # The shared trunk is the two sites' trunks averaged by their sample counts.
    record = rounds_log(run)[0]
    assert record["contributors"] == 2
    counts = record["site_examples"]
    assert counts["site-0"] == DIGITS_TRAIN and counts["site-1"] > 0
    weights = [counts["site-0"], counts["site-1"]]
    for key, value in final["shared"].items():
        expected = weighted_average([digits, ct], weights, key)
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(digits[key], ct[key])


@pytest.mark.slow
def test_a_restarted_federation_resumes_after_the_last_complete_round(tmp_path: Path) -> None:
    """The server dies while writing round 2 (only a partial file is left); the restart with
    run.dir and resume=true alone continues the federation's own config: it redoes round 2 from
    round 1's weights and goes on to round 3."""
    run = tmp_path / "federation"
    bf16_both_ways = ["federated.update_dtype=bf16", "federated.global_dtype=bf16"]
    common = [*FEDERATION, "federated.sites=1", *bf16_both_ways, f"run.dir={run}"]
    fmcore("federate", *common, cwd=tmp_path, timeout=300)
    round_2 = run / "rounds" / "round_0002.safetensors"
    round_2.rename(round_2.with_name(".partial-round_0002.safetensors"))

    refused = fmcore("federate", *common, cwd=tmp_path, check=False, timeout=120)
    assert refused.returncode == 2 and "resume=true" in refused.stderr

    changed = fmcore(
        "federate",
        f"run.dir={run}",
        "resume=true",
        "method.temperature=0.5",
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert changed.returncode == 2 and "cannot change method.temperature" in changed.stderr
    # the federation's own words (saved in its directory), not the defaults, with more rounds
    result = fmcore(
        "federate",
        f"run.dir={run}",
        "federated.rounds=3",
        "resume=true",
        cwd=tmp_path,
        timeout=300,
    )
    assert "federated.update_dtype=bf16" in (run / "federation_words.json").read_text()
    assert "round 1/" not in result.stdout and "round 2/3" in result.stdout
    log = rounds_log(run)
    assert [r["round"] for r in log] == [1, 2, 2, 3]
    for record in log:  # every round trained its own two steps of the federation's schedule
        assert record["metrics"]["local-steps"] == 2 and np.isfinite(record["metrics"]["loss"])
    assert CheckpointStore(run / "sites" / "site-0" / "checkpoints").latest().step == 6
    assert sorted(p.name for p in (run / "rounds").glob("round_*")) == [
        "round_0001.safetensors",
        "round_0002.safetensors",
        "round_0003.safetensors",
    ]

    # One site, bf16 both ways: the global weights are the site's rounded to bf16 (8 significant
    # bits) plus what rounding round 2's weights for the wire took off them (the server keeps
    # float32 precision); the site sent, and the server sent, two bytes per value plus a .npy
    # header per entry (and the site read them as weights, not as 16-bit patterns up to 65535).
    def bf16(value: np.ndarray) -> np.ndarray:
        return torch.from_numpy(value).bfloat16().float().numpy()

    site = site_state(run, "site-0")
    final, before = global_round(run, 3), global_round(run, 2)
    entries = [(key, value) for group in final.values() for key, value in group.items()]
    previous = {key: value for group in before.values() for key, value in group.items()}
    for key, value in entries:
        if np.issubdtype(value.dtype, np.floating):
            expected = bf16(site[key]) + (previous[key] - bf16(previous[key]))
            np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=key)
    assert any(not np.array_equal(value, site[key]) for key, value in entries)
    halves = 2 * sum(value.size for _, value in entries)
    sent = rounds_log(run)[-1]["bytes_up"]["site-0"]
    assert halves < sent <= halves + 256 * len(entries)
    received = rounds_log(run)[-1]["bytes_down"]["site-0"]
    assert halves < received <= halves + 256 * len(entries)
    assert max(float(np.abs(value).max()) for _, value in entries if value.size) < 100


@pytest.mark.slow
def test_dinov2_federates_on_the_embedded_slides(tmp_path: Path) -> None:
    """`fmcore federate domain=pathology method=dinov2 federated.sites=2 federated.rounds=2`
    with the reference recipe (vit_tiny, 224-px tiles), one small local step per round."""
    run = tmp_path / "federation"
    result = fmcore(
        "federate",
        "domain=pathology",
        "method=dinov2",
        "federated.sites=2",
        "federated.rounds=2",
        "federated.local_steps=1",
        "trainer.batch_size=2",
        "trainer.num_workers=0",
        "trainer.progress=none",
        f"run.dir={run}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
        timeout=600,
    )
    assert "finished 2 rounds" in result.stdout
    assert len(list((run / "rounds").glob("round_*.safetensors"))) == 2
    for record in rounds_log(run):
        assert record["contributors"] == 2 and record["failures"] == []
    final = global_round(run, 2)
    assert set(final) == {"shared", "domain:pathology:image2d"}
    # Student and teacher, trunks and heads all travel (Sinkhorn-Knopp keeps no local centre).
    site = site_state(run, "site-0")
    assert set().union(*final.values()) == set(site)
    assert any(key.startswith("teacher") for key in final["shared"])


@pytest.mark.slow
def test_server_side_dp_clips_each_sites_update_before_averaging(tmp_path: Path) -> None:
    """Flower's fixed-clipping DP wrapper with zero noise: round 2's global trunk is round 1's
    plus the plain mean (DP weighs every site the same) of each site's update scaled to norm
    <= clipping_norm."""
    run = tmp_path / "federation"
    clip = 0.05
    fmcore(
        "federate",
        *FEDERATION,
        "federated.dp.clipping=fixed",
        "federated.dp.noise_multiplier=0",
        f"+federated.dp.args.clipping_norm={clip}",
        f"run.dir={run}",
        cwd=tmp_path,
        timeout=300,
    )
    before, after = global_round(run, 1)["shared"], global_round(run, 2)["shared"]
    keys = sorted(before)
    weights = [1.0, 1.0]
    clipped = []
    for site in ("site-0", "site-1"):
        state = site_state(run, site)
        update = np.concatenate([(state[k] - before[k]).ravel() for k in keys])
        assert np.linalg.norm(update) > clip  # the sites moved further than the clip allows
        clipped.append(update * min(1.0, clip / np.linalg.norm(update)))
    expected = sum(w * c for w, c in zip(weights, clipped, strict=True)) / sum(weights)
    moved = np.concatenate([(after[k] - before[k]).ravel() for k in keys])
    np.testing.assert_allclose(moved, expected, rtol=1e-3, atol=5e-7)  # float32 rounding of w
    assert np.linalg.norm(moved) <= clip * (1 + 1e-5)


@pytest.mark.slow
def test_a_federation_whose_sites_all_fail_stops_without_a_round_file(tmp_path: Path) -> None:
    run = tmp_path / "federation"
    result = fmcore(
        "federate",
        *FEDERATION,
        "federated.sites=1",
        "federated.max_failed_rounds=2",
        f"federated.site_data=[{tmp_path / 'nowhere'}]",
        f"run.dir={run}",
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert result.returncode == 2
    assert "2 rounds in a row (up to round 2) got fewer than federated.min_sites=1" in result.stderr
    assert not list((run / "rounds").glob("round_*"))
    log = rounds_log(run)  # a round without usable updates keeps the model and counts, as in Flower
    assert [(r["round"], r["contributors"], r["checkpoint"]) for r in log] == [
        (1, 0, None),
        (2, 0, None),
    ]
