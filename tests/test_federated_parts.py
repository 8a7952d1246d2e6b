"""The federated pieces on their own: data splits, update checks, the wire format, FedProx's term,
strategy configuration, the round store and aggregation scopes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL_RUN
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import save_file

from fmcore.config import compose, config_sources
from fmcore.encoder_source import read_encoder_source
from fmcore.errors import ConfigError
from fmcore.factory import build_domain, build_parts
from fmcore.federated.apps import deployed_site
from fmcore.federated.federation_config import (
    FederatedSection,
    compose_federation,
    federated_section,
)
from fmcore.federated.partition import site_share
from fmcore.federated.scoped_strategy import NodeSubset
from fmcore.federated.scopes import SHARED_GROUP, split_by_group
from fmcore.federated.server_optimizer import (
    innermost,
    optimizer_state,
    restore_optimizer_state,
)
from fmcore.federated.site import initial_groups, proximal_term
from fmcore.federated.store import RoundStore
from fmcore.federated.strategies import EqualWeights, make_strategy
from fmcore.federated.updates import update_problem
from fmcore.federated.wire import record_bytes, to_numpy, to_record
from fmcore.plugin_manager import registry
from fmcore.timm_layout import to_timm_state_dict


def digits_config(*words: str):
    return compose(["federated=fedavg", *SMALL_RUN, *words], config_sources(registry()))


def federated_settings(*words: str) -> FederatedSection:
    return federated_section(compose_federation([*SMALL_RUN, *words], registry()))


def test_iid_shares_are_disjoint_and_cover_the_data(tmp_path: Path) -> None:
    config = digits_config(f"run.cache_dir={tmp_path}")
    domain = build_domain(config, registry())
    refs = list(domain.index("train"))
    shares = [site_share(domain, refs, "iid", i, 3, seed=0) for i in range(3)]
    assert sorted(r for share in shares for r in share) == sorted(refs)
    assert [len(s) for s in shares] == [len(range(i, len(refs), 3)) for i in range(3)]


def test_splitting_by_label_gives_each_label_to_one_site(tmp_path: Path) -> None:
    config = digits_config(f"run.cache_dir={tmp_path}")
    domain = build_domain(config, registry())
    refs = list(domain.index("train"))
    labels_per_site = [
        {domain.load(r).label for r in site_share(domain, refs, "label", i, 2, seed=0)}
        for i in range(2)
    ]
    assert labels_per_site[0].isdisjoint(labels_per_site[1])
    assert labels_per_site[0] | labels_per_site[1] == set(range(10))
    with pytest.raises(ConfigError, match="can be split by iid, label"):
        site_share(domain, refs, "slide", 0, 2, seed=0)


def test_updates_with_wrong_entries_shapes_or_values_are_named() -> None:
    expected = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}
    assert update_problem({k: v + 1 for k, v in expected.items()}, expected) is None
    assert "missing ['b']" in update_problem({"a": expected["a"]}, expected)
    assert "shape [3, 2]" in update_problem({"a": np.zeros((3, 2)), "b": expected["b"]}, expected)
    poisoned = {"a": expected["a"], "b": np.array([0, np.inf, 0, 0], np.float32)}
    assert "'b' holds NaN or Inf" in update_problem(poisoned, expected)
    integers = {"a": expected["a"], "b": np.zeros(4, np.uint16)}
    assert "'b' holds uint16 values, expected float32" in update_problem(integers, expected)


def test_bf16_updates_halve_the_payload_and_round_to_bf16_precision() -> None:
    generator = torch.Generator().manual_seed(0)
    state = {
        "weight": torch.randn(64, 64, generator=generator),
        "steps": torch.tensor([7, 9], dtype=torch.int64),
    }
    full, half = to_record(state), to_record(state, "bf16")
    assert len(half["weight"].data) - 128 <= (len(full["weight"].data) - 128) / 2
    assert record_bytes(half) < 0.51 * record_bytes(full) + 256
    back = to_numpy(half, "bf16")
    weight = state["weight"].numpy()
    # bf16 keeps 8 significant bits: round-to-nearest errs by at most 2^-9 of the magnitude.
    assert np.all(np.abs(back["weight"] - weight) <= np.abs(weight) * 2.0**-8)
    assert back["weight"].dtype == np.float32
    np.testing.assert_array_equal(back["steps"], [7, 9])


def test_the_proximal_term_is_mu_over_two_times_the_squared_distance() -> None:
    module = torch.nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[1.0, 2.0]]))
        module.bias.fill_(3.0)
    reference = {"weight": torch.zeros(1, 2), "bias": torch.tensor([1.0])}
    value = proximal_term(reference, mu=0.5)(module)
    assert value.item() == pytest.approx(0.25 * (1 + 4 + 4))
    value.backward()  # the gradient is mu (w - w_global)
    torch.testing.assert_close(module.weight.grad, torch.tensor([[0.5, 1.0]]))


def test_strategies_come_from_flower_and_bad_settings_are_named() -> None:
    from flwr.serverapp import strategy as flower

    settings = federated_settings("federated=fedprox")
    strategy = make_strategy(settings, sites=3, min_sites=2, fraction=1.0)
    assert type(strategy) is flower.FedProx and strategy.proximal_mu == 0.01
    assert strategy.min_train_nodes == 2
    dp = federated_settings(
        "federated=fedprox",
        "federated.dp.clipping=fixed",
        "federated.dp.noise_multiplier=0.5",
        "+federated.dp.args.clipping_norm=2",
    )
    wrapped = make_strategy(dp, sites=3, min_sites=1, fraction=1.0)
    # Flower's DP wrapper, inside one that weighs every update the same (DP's plain mean).
    assert type(wrapped) is EqualWeights
    private = wrapped.inner
    assert type(private) is flower.DifferentialPrivacyServerSideFixedClipping
    assert private.clipping_norm == 2 and private.num_sampled_clients == 3
    # Noise is calibrated for as many sites as Flower samples: max(int(0.7 x 5), min) = 3.
    assert make_strategy(dp, sites=5, min_sites=1, fraction=0.7).inner.num_sampled_clients == 3
    with pytest.raises(ConfigError, match="FedAvg, FedProx"):
        make_strategy(federated_settings("federated.strategy=FedMagic"), 2, 1, 1.0)
    with pytest.raises(ConfigError, match="strategy_args do not fit FedProx"):
        make_strategy(
            federated_settings("federated=fedprox", "+federated.strategy_args.nope=1"),
            2,
            1,
            1.0,
        )


def test_the_round_store_keeps_complete_rounds_only(tmp_path: Path) -> None:
    store = RoundStore(tmp_path)
    assert store.latest() is None
    state = {SHARED_GROUP: {"w": np.arange(3, dtype=np.float32)}, "domain:x:y": {"t": np.ones(2)}}
    store.save(1, state)
    store.save(2, {g: {k: v * 2 for k, v in e.items()} for g, e in state.items()})
    (store.directory / ".partial-round_0003.safetensors").write_bytes(b"half a file")
    last, loaded = store.latest()
    assert last == 2
    np.testing.assert_array_equal(loaded[SHARED_GROUP]["w"], [0, 2, 4])
    np.testing.assert_array_equal(loaded["domain:x:y"]["t"], [2, 2])


def test_a_federation_starts_from_init_and_its_rounds_never_read_the_file(tmp_path: Path) -> None:
    cache = f"run.cache_dir={tmp_path}"
    source = build_parts(digits_config(cache, "run.seed=5"), registry()).method.export_encoder()
    weights = tmp_path / "start.safetensors"
    save_file(to_timm_state_dict(source), str(weights))
    groups = initial_groups(digits_config(cache, f"init={weights}"), registry())
    shared = groups[SHARED_GROUP]
    key = next(key for key in shared if key.endswith("trunk.blocks.1.attn.qkv.weight"))
    assert shared[key].equal(source.trunk.blocks[1].attn.qkv.weight)
    # a round resumes the site's run or takes the global weights: init= is not read again
    build_parts(digits_config(cache, f"init={tmp_path / 'absent.pth'}"), registry())


def test_two_federations_with_one_state_dir_keep_their_site_state_apart(tmp_path: Path) -> None:
    node = {"site-name": "hospital-a", "data-root": "/data/a", "state-dir": str(tmp_path)}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
    config = digits_config()
    first = deployed_site(context, "runs-a-1f2e3d4c", config)
    second = deployed_site(context, "runs-b-99aa00bb", config)
    assert first.state_dir == tmp_path / "runs-a-1f2e3d4c" / "hospital-a"
    assert second.state_dir == tmp_path / "runs-b-99aa00bb" / "hospital-a"
    assert first.overrides == ("data.root=/data/a",)


@pytest.fixture
def flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower's runtime sets before a ServerApp or ClientApp makes messages."""
    for attribute, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attribute, value)


def flower_round(strategy, server_round: int, weights: np.ndarray, updates: list[np.ndarray]):
    """One round of ``strategy`` over two nodes: the global ``weights`` out, ``updates`` back."""
    sent = strategy.configure_train(
        server_round, ArrayRecord({"w": Array(weights)}), ConfigRecord(), NodeSubset([1, 2])
    )
    replies = []
    for message, update in zip(sent, updates, strict=True):
        TaskIdentity._node_id = message.metadata.dst_node_id  # the replying node
        content = {
            "arrays": ArrayRecord({"w": Array(update)}),
            "metrics": MetricRecord({"num-examples": 1}),
        }
        replies.append(Message(RecordDict(content), reply_to=message))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    return arrays["w"].numpy()


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
def test_a_restored_server_optimizer_continues_exactly(
    tmp_path: Path, flower_task: None, strategy: str
) -> None:
    """Rounds 1-2, a restart from the saved round, round 3: the same weights as never stopping;
    a restart that lost the moments (or momentum) gives others."""
    settings = federated_settings(f"federated={strategy}", "federated.sites=2")

    def fresh():
        return {SHARED_GROUP: make_strategy(settings, sites=2, min_sites=2, fraction=1.0)}

    rng = np.random.default_rng(0)
    updates = [[rng.normal(size=4).astype(np.float32) for _ in range(2)] for _ in range(3)]
    running, weights = fresh(), np.zeros(4, np.float32)
    for server_round in (1, 2):
        weights = flower_round(
            running[SHARED_GROUP], server_round, weights, updates[server_round - 1]
        )
    store = RoundStore(tmp_path)
    store.save(2, {SHARED_GROUP: {"w": weights}}, optimizer_state(running))
    uninterrupted = flower_round(running[SHARED_GROUP], 3, weights, updates[2])

    restarted = fresh()
    restore_optimizer_state(restarted, store.optimizer(2))
    resumed = flower_round(
        restarted[SHARED_GROUP], 3, store.latest()[1][SHARED_GROUP]["w"], updates[2]
    )
    np.testing.assert_array_equal(resumed, uninterrupted)
    forgetful = flower_round(fresh()[SHARED_GROUP], 3, weights, updates[2])
    assert not np.allclose(forgetful, uninterrupted)
    store.save(3, {SHARED_GROUP: {"w": resumed}}, optimizer_state(restarted))
    assert sorted(p.name for p in store.directory.glob("server_optimizer_*")) == [
        "server_optimizer_0003.safetensors"
    ]
    with pytest.raises(ConfigError, match="server's optimizer state, not weights"):
        read_encoder_source(store.optimizer_path(3), registry())


def test_the_optimizer_state_is_found_under_the_dp_and_equal_weight_wrappers() -> None:
    settings = federated_settings(
        "federated=fedadam", "federated.dp.clipping=fixed", "+federated.dp.args.clipping_norm=1.0"
    )
    wrapped = make_strategy(settings, sites=2, min_sites=2, fraction=1.0)
    inner = innermost(wrapped)
    assert type(wrapped).__name__ == "EqualWeights" and type(inner).__name__ == "FedAdam"
    inner.m_t, inner.v_t = {"w": np.ones(2)}, {"w": np.full(2, 4.0)}
    saved = optimizer_state({SHARED_GROUP: wrapped})
    assert set(saved) == {"shared/m_t/w", "shared/v_t/w"}
    fresh = make_strategy(settings, sites=2, min_sites=2, fraction=1.0)
    restore_optimizer_state({SHARED_GROUP: fresh}, saved)
    np.testing.assert_array_equal(innermost(fresh).v_t["w"], np.full(2, 4.0))


def test_trunks_are_shared_and_everything_else_stays_within_the_domain(tmp_path: Path) -> None:
    config = digits_config(f"run.cache_dir={tmp_path}")
    method = build_parts(config, registry()).method
    groups = split_by_group(method, "digits", "image2d")
    assert set(groups) == {SHARED_GROUP, "domain:digits:image2d"}
    assert all(".trunk." in f".{key}" for key in groups[SHARED_GROUP])
    assert not any(".trunk." in f".{key}" for key in groups["domain:digits:image2d"])
    assert set(groups[SHARED_GROUP]) | set(groups["domain:digits:image2d"]) == set(
        method.state_dict()
    )


def test_federate_refuses_a_saved_config_and_names_what_to_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from fmcore.cli import main

    assert main(["federate", "--config", "runs/x/config.yaml"]) == 2
    assert "fmcore federate run.dir=<its directory> resume=true" in capsys.readouterr().err


def test_local_entries_never_join_a_group(tmp_path: Path) -> None:
    """DINOv2 with softmax centring keeps its running centres at the site."""
    config = compose(
        ["domain=digits", "method=dinov2_small", "method.centering=softmax"],
        config_sources(registry()),
    )
    method = build_parts(config, registry()).method
    local = [key for key in method.state_dict() if "centering." in key]
    assert local  # dino_centering.center, ibot_centering.center
    groups = split_by_group(method, "digits", "image2d")
    sent = set().union(*groups.values())
    assert sent.isdisjoint(local) and sent | set(local) == set(method.state_dict())


def test_resuming_a_federation_that_never_finished_a_round_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fmcore.cli import main

    assert main(["federate", *SMALL_RUN, f"run.dir={tmp_path / 'none'}", "resume=true"]) == 2
    assert "holds no complete federated round" in capsys.readouterr().err


def test_a_federations_engine_schedule_is_derived_and_cannot_be_set() -> None:
    from fmcore.federated.federation_config import compose_federation

    config = compose_federation(
        [*SMALL_RUN, "federated.rounds=3", "federated.local_steps=5"], registry()
    )
    assert config.trainer.max_steps == 15 and config.federated.strategy == "FedAvg"
    with pytest.raises(ConfigError, match=r"trainer\.max_steps is derived"):
        compose_federation([*SMALL_RUN, "trainer.max_steps=7"], registry())


def test_a_client_app_composes_each_word_list_once_and_hands_out_copies() -> None:
    from fmcore.federated.federation_config import ComposedConfigs, compose_federation

    loads = []

    def plugins():
        loads.append(1)
        return registry()

    compose = ComposedConfigs(plugins)
    assert not loads, "nothing is composed before the first message"
    first = compose([*SMALL_RUN, "federated.rounds=2"])
    first.trainer.lr = 123.0  # a round may change its copy ...
    second = compose([*SMALL_RUN, "federated.rounds=2"])
    assert second.trainer.lr != 123.0  # ... without changing the next round's
    assert second == compose_federation([*SMALL_RUN, "federated.rounds=2"], registry())
    other = compose([*SMALL_RUN, "federated.rounds=4"])
    assert other.trainer.max_steps == 2 * second.trainer.max_steps
    assert len(loads) == 2, "one composition per distinct word list"


@pytest.mark.parametrize(
    ("word", "named"),
    [
        ("federated.rounds=ten", r"federated\.rounds: Value 'ten'"),
        ("federated.local_steps=0", r"federated\.local_steps must be at least 1"),
        ("federated.fraction=1.5", r"federated\.fraction must lie in \(0, 1\]"),
        ("federated.min_sites=3", r"federated\.min_sites=3 is more than federated\.sites=2"),
        ("federated.update_dtype=fp8", r"federated\.update_dtype must be one of fp32, bf16"),
        ("federated.dp.noise_multiplier=lots", r"federated\.dp\.noise_multiplier: Value 'lots'"),
    ],
)
def test_a_bad_federated_value_is_refused_when_composed_naming_its_key(word, named) -> None:
    with pytest.raises(ConfigError, match=named):
        federated_settings(word)


def test_the_federated_section_is_typed_and_keeps_added_keys() -> None:
    settings = federated_settings("federated.round_timeout=90", "+federated.strategy_args.x=1")
    assert settings.round_timeout == 90.0 and isinstance(settings.round_timeout, float)
    assert settings.dp.clipping is None and settings.secagg.quantization_range == 2**22
    assert settings.strategy_args == {"x": 1}


def test_the_wrappers_decode_a_rounds_weights_once_and_read_them_back_exactly() -> None:
    from fmcore.federated.scoped_strategy import StateRecords
    from fmcore.federated.wire import as_record

    state = {
        "shared": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "domain:digits:image2d": {"n": np.array([3], dtype=np.int64)},
    }
    records = StateRecords()
    record = records.record_of(state)
    assert records.state_of(record) is state  # the record it just made: no decoding
    flat = {f"{g}/{k}": v for g, entries in state.items() for k, v in entries.items()}
    decoded = records.state_of(as_record(flat))  # a record from elsewhere is decoded
    assert decoded is not state and set(decoded) == set(state)
    for group, entries in state.items():
        for key, value in entries.items():
            assert decoded[group][key].dtype == value.dtype
            np.testing.assert_array_equal(decoded[group][key], value)


def test_every_kind_of_entry_keeps_its_shape_and_dtype_on_the_wire_and_in_round_files(
    tmp_path: Path,
) -> None:
    """0-d (a BatchNorm's num_batches_tracked), empty, bool and integer entries come back as
    they were sent; floats travel as float32 (or bf16 patterns) and come back as float32."""
    from fmcore.federated.secure_layout import flatten, layout_of, unflatten
    from fmcore.federated.wire import as_record, to_state

    state = {
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.tensor([[1, 2], [3, 4]], dtype=torch.int32),
        "scalar": torch.tensor(2.5),
        "weight": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).t(),  # not contiguous
    }
    for wire in ("fp32", "bf16"):
        back = to_state(to_record(state, wire), wire)
        for key, sent in state.items():
            assert back[key].shape == sent.shape, (wire, key)
            expected = torch.float32 if sent.is_floating_point() else sent.dtype
            assert back[key].dtype == expected, (wire, key)
            assert torch.equal(back[key], sent.to(expected)), (wire, key)
    arrays = {
        key: value.float().numpy() if value.is_floating_point() else value.numpy()
        for key, value in state.items()
    }
    again = to_numpy(as_record(arrays))
    assert {k: (v.shape, v.dtype) for k, v in again.items()} == {
        k: (v.shape, v.dtype) for k, v in arrays.items()
    }
    grouped = {"shared": arrays}
    assert (
        unflatten(layout_of(grouped), flatten(layout_of(grouped), grouped))["shared"][
            "bn.num_batches_tracked"
        ].shape
        == ()
    )
    store = RoundStore(tmp_path)
    store.save(1, grouped)
    _, loaded = store.latest()
    assert {k: (v.shape, v.dtype) for k, v in loaded["shared"].items()} == {
        k: (v.shape, v.dtype) for k, v in arrays.items()
    }


def test_weights_of_another_shape_are_refused_naming_the_key_and_both_shapes() -> None:
    from fmcore.engine.checkpoint import load_partial_state

    model = torch.nn.Linear(3, 2)
    with pytest.raises(
        ConfigError, match=r"wrong shape: weight \[2, 4\] where the model has \[2, 3\]"
    ):
        load_partial_state(model, {"weight": torch.zeros(2, 4)})
    load_partial_state(model, {"bias": torch.ones(2)})
    assert torch.equal(model.bias.data, torch.ones(2))


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_bf16_global_weights_lose_no_float32_precision_round_after_round(
    flower_task: None, strategy: str
) -> None:
    """Sites receive the global weights rounded to bf16 and each adds 1e-3 (below half a bf16
    step at 1.0): after 20 rounds the global has moved as in float32 (FedAvg: 1 + 20e-3
    exactly as float32 sums; FedAdam: the same steps as a float32 run), not stuck at 1.0."""
    from fmcore.federated.scoped_strategy import ScopedAggregation, StateRecords
    from fmcore.federated.sites import SiteInfo

    def run(dtype: str) -> np.ndarray:
        settings = federated_settings(f"federated={strategy}", "federated.sites=2")
        sites = {n: SiteInfo(n, f"site-{n}", (SHARED_GROUP,)) for n in (1, 2)}
        groups = {SHARED_GROUP: make_strategy(settings, sites=2, min_sites=2, fraction=1.0)}
        records = StateRecords()
        scoped = ScopedAggregation(groups, sites, "f", lambda _: False, records, dtype)
        arrays = records.record_of({SHARED_GROUP: {"w": np.full(3, 1.0, np.float32)}})
        for server_round in range(1, 21):
            replies = []
            for message in scoped.configure_train(server_round, arrays, ConfigRecord(), None):
                TaskIdentity._node_id = message.metadata.dst_node_id
                dtype_sent = str(message.content["config"].get("global-dtype", "fp32"))
                received = to_numpy(message.content[SHARED_GROUP], dtype_sent)["w"]
                content = {
                    SHARED_GROUP: to_record({"w": torch.from_numpy(received + 1e-3)}),
                    "metrics": MetricRecord({"num-examples": 1}),
                }
                replies.append(Message(RecordDict(content), reply_to=message))
            arrays, _ = scoped.aggregate_train(server_round, replies)
        return records.state_of(arrays)[SHARED_GROUP]["w"]

    in_float32, in_bf16 = run("fp32"), run("bf16")
    assert in_float32[0] > 1.0 + 2 * 2.0**-8  # it moved by more than two bf16 steps
    np.testing.assert_allclose(in_bf16, in_float32, rtol=0, atol=1e-5)
