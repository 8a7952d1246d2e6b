"""``fmcore export`` and ``fmcore eval`` on whatever a run left: its directory, a training
checkpoint, a federated round.

One real DINOv2 run on digits (2 steps: its EMA teacher, the exported encoder, already differs
from the student) gives the run directory and the checkpoint; the round files are written by the
federation's own ``RoundStore`` from that run's weights split into groups as a site splits them
(Flower's simulation would add ~25 s and nothing this file checks). Every exported tensor is
compared with the tensor read straight from the source file with safetensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fmcore.cli import main
from fmcore.config import compose, config_sources, to_yaml
from fmcore.engine.checkpoint import CheckpointStore
from fmcore.engine.trainer import train
from fmcore.errors import ConfigError, MissingPath
from fmcore.export import export_encoder
from fmcore.factory import build_parts, run_encoder_metadata
from fmcore.federated.federation_config import compose_federation
from fmcore.federated.scopes import split_by_group
from fmcore.federated.store import RoundStore, load_round
from fmcore.plugin_manager import registry
from fmcore.run_files import write_encoder

DEPTH, WIDTH, PATCH, SIZE = (
    2,
    192,
    4,
    16,
)  # encoder=vit_tiny at 2 blocks; digits: 16 px, 4 px patches
RUN = [
    "domain=digits",
    "method=dinov2_small",
    "encoder=vit_tiny",
    f"encoder.depth={DEPTH}",
    "trainer.batch_size=8",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.progress=none",
    "trainer.warmup_steps=1",
]
TEACHER = "teacher.encoder."  # DINOv2 exports its EMA teacher (plugins/dinov2/method.py)
DOMAIN_GROUP = "domain:digits:image2d"
FUNDUS_GROUP = "domain:ophthalmology:image2d"


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("export") / "run"
    plugins = registry()
    train(compose([*RUN, "trainer.max_steps=2", f"run.dir={directory}"], config_sources(plugins)))
    return directory


@pytest.fixture(scope="module")
def federation(run: Path) -> Path:
    """A federated run directory: its config.yaml and round files 1 (the sites' initial
    weights) and 3 (the run's trained weights), split into groups as sites send them."""
    directory = run.parent / "federation"
    plugins = registry()
    words = [*RUN, "federated.rounds=3", "federated.local_steps=2", f"run.dir={directory}"]
    config = compose_federation(words, plugins)
    directory.mkdir()
    (directory / "config.yaml").write_text(to_yaml(config))
    torch.manual_seed(0)
    method = build_parts(config, plugins).method
    store = RoundStore(directory)
    for server_round in (1, 3):
        if server_round == 3:
            trained = CheckpointStore(run / "checkpoints").latest()
            method.load_state_dict(trained.model_state())
        groups = split_by_group(method, "digits", "image2d")
        state = {g: {k: v.numpy() for k, v in entries.items()} for g, entries in groups.items()}
        store.save(server_round, state)
    return directory


def test_a_run_dir_a_checkpoint_and_a_round_export_the_weights_they_hold(
    run: Path, federation: Path, tmp_path: Path
) -> None:
    plugins = registry()
    encoder_file = run / "encoder.safetensors"
    from_run = export_encoder(run, tmp_path / "run.safetensors", plugins)
    assert from_run.source.path == encoder_file
    assert_same_tensors(load_file(str(from_run.out)), load_file(str(encoder_file)))
    assert metadata(from_run.out) == metadata(encoder_file)

    # The checkpoint holds the whole method; its encoder is the teacher, as the trainer wrote.
    step_dir = run / "checkpoints" / "step_00000002"
    method_state = load_file(str(step_dir / "model.safetensors"))
    teacher = {k.removeprefix(TEACHER): v for k, v in method_state.items() if k.startswith(TEACHER)}
    student = method_state["encoder.trunk.blocks.0.attn.qkv.weight"]
    assert not torch.equal(teacher["trunk.blocks.0.attn.qkv.weight"], student)
    interrupted = tmp_path / "interrupted"  # a run stopped before it wrote its encoder file
    shutil.copytree(run, interrupted, ignore=shutil.ignore_patterns("encoder.safetensors"))
    sources = (step_dir, step_dir / "model.safetensors", run / "checkpoints", interrupted)
    for source in sources:
        exported = export_encoder(source, tmp_path / "checkpoint.safetensors", plugins)
        assert_same_tensors(load_file(str(exported.out)), teacher)
        assert metadata(exported.out) == metadata(encoder_file)  # step 2, the run's config

    # A round: the shared trunk and the domain's tokenizer of the federation's exported encoder.
    round_file = federation / "rounds" / "round_0003.safetensors"
    entries = load_file(str(round_file))
    expected = {
        name.split("/", 1)[1].removeprefix(TEACHER): value
        for name, value in entries.items()
        if name.split("/", 1)[1].startswith(TEACHER)
    }
    assert {name.split("/", 1)[0] for name in entries} == {"shared", DOMAIN_GROUP}
    for source in (round_file, federation):  # the directory stands for its newest round
        exported = export_encoder(source, tmp_path / "round.safetensors", plugins)
        assert exported.source.path == round_file
        assert_same_tensors(load_file(str(exported.out)), expected)
    round_metadata = metadata(exported.out)
    assert round_metadata["step"] == "6"  # round 3 of 2 local steps each
    assert OmegaConf.create(round_metadata["encoder"]).depth == DEPTH


def test_a_round_of_two_domains_gives_the_asked_domains_tokenizer(
    federation: Path, tmp_path: Path
) -> None:
    """Sites of digits and of fundus photographs share the trunk; each domain's tokenizer is its
    own group, and the domain asked for picks it, built from that domain's site config."""
    plugins = registry()
    directory = tmp_path / "two-domains"
    shutil.copytree(federation, directory)
    words = [*RUN, "domain=ophthalmology", "federated.rounds=3", "federated.local_steps=2"]
    site = compose_federation(words, plugins)
    fundus = split_by_group(build_parts(site, plugins).method, "ophthalmology", "image2d")
    store = RoundStore(directory)
    state = load_round(store.path(3))
    state[FUNDUS_GROUP] = {k: v.numpy() for k, v in fundus[FUNDUS_GROUP].items()}
    store.save(3, state)
    with pytest.raises(MissingPath, match="holds ophthalmology's tokenizer, but"):
        export_encoder(directory, tmp_path / "x.safetensors", plugins, domain="ophthalmology")
    (directory / "sites" / "site-1").mkdir(parents=True)
    (directory / "sites" / "site-1" / "config.yaml").write_text(to_yaml(site))

    for domain, group in (("ophthalmology", FUNDUS_GROUP), ("digits", DOMAIN_GROUP)):
        exported = export_encoder(
            directory, tmp_path / f"{domain}.safetensors", plugins, domain=domain
        )
        expected = {
            key.removeprefix(TEACHER): torch.from_numpy(value)
            for name in ("shared", group)
            for key, value in state[name].items()
            if key.startswith(TEACHER)
        }
        assert_same_tensors(load_file(str(exported.out)), expected)
        assert metadata(exported.out)["domain"] == domain


def test_fmcore_eval_scores_an_exported_file_and_a_round_file(
    run: Path,
    federation: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
) -> None:
    exported = tmp_path / "teacher.safetensors"
    assert main(["export", str(run / "checkpoints"), "--out", str(exported)]) == 0
    assert f"wrote {exported}" in capsys.readouterr().out
    round_file = federation / "rounds" / "round_0003.safetensors"
    for checkpoint, name in ((exported, "file"), (round_file, "round")):
        words = [
            f"checkpoint={checkpoint}",
            "domain=digits",
            "eval=knn",
            "eval.bootstrap=0",
            "trainer.device=cpu",
            "trainer.num_workers=0",
            f"run.dir={tmp_path / name}",
        ]
        assert main(["eval", *words]) == 0, capsys.readouterr().err
        result = json.loads((tmp_path / name / "eval.json").read_text())
        assert result["checkpoint"] == str(checkpoint)
        assert result["checkpoint_step"] == ("2" if name == "file" else "6")
        assert 0.1 < result["metrics"]["accuracy"] <= 1.0


def test_fmcore_embed_of_a_checkpoint_equals_embed_of_the_runs_encoder_file(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    features = {}
    for name, checkpoint in (("file", run), ("checkpoint", run / "checkpoints")):
        out = tmp_path / name
        words = [f"checkpoint={checkpoint}", "domain=digits", "embed.split=val", f"embed.out={out}"]
        assert main(["embed", *words, "trainer.device=cpu", "trainer.num_workers=0"]) == 0
        assert "embedded 360 samples" in capsys.readouterr().out
        features[name] = torch.cat(
            [load_file(str(shard))["features"] for shard in sorted(out.glob("shard-*"))]
        )
    assert features["file"].shape == (360, WIDTH)
    assert torch.equal(features["checkpoint"], features["file"])


def test_the_timm_export_has_timms_vision_transformer_layout(run: Path, tmp_path: Path) -> None:
    """Keys and shapes as timm's VisionTransformer (timm/models/vision_transformer.py) holds
    them for this encoder; the numerics of the layout (an independent forward pass, both
    pos_embed layouts) are tests/test_timm_layout.py's."""
    out = tmp_path / "timm.safetensors"
    export_encoder(run, out, registry(), format="timm")
    state = {key: tuple(value.shape) for key, value in load_file(str(out)).items()}
    patches, hidden = (SIZE // PATCH) ** 2, 4 * WIDTH
    assert state.pop("pos_embed") in {(1, patches, WIDTH), (1, 1 + patches, WIDTH)}
    expected = {
        "cls_token": (1, 1, WIDTH),
        "patch_embed.proj.weight": (WIDTH, 1, PATCH, PATCH),  # grey digits
        "patch_embed.proj.bias": (WIDTH,),
        "norm.weight": (WIDTH,),
        "norm.bias": (WIDTH,),
    }
    for i in range(DEPTH):
        for name, shape in {
            "norm1.weight": (WIDTH,),
            "norm1.bias": (WIDTH,),
            "attn.qkv.weight": (3 * WIDTH, WIDTH),
            "attn.qkv.bias": (3 * WIDTH,),
            "attn.proj.weight": (WIDTH, WIDTH),
            "attn.proj.bias": (WIDTH,),
            "norm2.weight": (WIDTH,),
            "norm2.bias": (WIDTH,),
            "mlp.fc1.weight": (hidden, WIDTH),
            "mlp.fc1.bias": (hidden,),
            "mlp.fc2.weight": (WIDTH, hidden),
            "mlp.fc2.bias": (WIDTH,),
        }.items():
            expected[f"blocks.{i}.{name}"] = shape
    assert state == expected  # dinov2_small trains without LayerScale: no ls1/ls2.gamma
    teacher = load_file(str(run / "encoder.safetensors"))
    assert torch.equal(
        load_file(str(out))["blocks.1.mlp.fc2.weight"], teacher["trunk.blocks.1.mlp.fc2.weight"]
    )


def test_the_timm_export_refuses_an_encoder_that_is_not_a_2d_vit(tmp_path: Path) -> None:
    plugins = registry()
    config = compose(
        [*RUN, "encoder=mamba_tiny", f"encoder.depth={DEPTH}"], config_sources(plugins)
    )
    parts = build_parts(config, plugins)
    mamba = tmp_path / "mamba.safetensors"
    state = parts.method.export_encoder().state_dict()
    write_encoder(state, mamba, run_encoder_metadata(config, parts.modality.name, 0))
    with pytest.raises(ConfigError, match=r"mamba.safetensors: --format timm writes 2D ViT"):
        export_encoder(mamba, tmp_path / "timm.safetensors", plugins, format="timm")
    assert not (tmp_path / "timm.safetensors").exists()
    export_encoder(mamba, tmp_path / "kept.safetensors", plugins)  # the fmcore format keeps it
    assert_same_tensors(load_file(str(tmp_path / "kept.safetensors")), load_file(str(mamba)))


def test_what_is_not_an_encoder_source_is_named_with_the_reason(
    run: Path, federation: Path, tmp_path: Path
) -> None:
    plugins = registry()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file " * 8)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((run / "encoder.safetensors").read_bytes()[:5000])
    optimizer = run / "checkpoints" / "step_00000002" / "optimizer.safetensors"
    other_round = tmp_path / "round_0001.safetensors"
    save_file({"shared/w": torch.zeros(2)}, str(other_round), {"format": "fmcore.federated/9"})
    cases = [
        (garbage, "not a readable safetensors file"),
        (truncated, "not a readable safetensors file"),
        (optimizer, "neither an fmcore encoder, a training checkpoint's model.safetensors"),
        (other_round, "round file of format fmcore.federated/9 and this fmcore reads"),
    ]
    for path, reason in cases:
        with pytest.raises(ConfigError, match=reason) as refused:
            export_encoder(path, tmp_path / "out.safetensors", plugins)
        assert str(path) in str(refused.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingPath, match=r"no encoder\.safetensors, complete checkpoint or"):
        export_encoder(tmp_path / "empty", tmp_path / "out.safetensors", plugins)

    # A round file moved out of its federation has no config to say whose method it holds.
    lone = tmp_path / "lone" / "rounds" / "round_0003.safetensors"
    lone.parent.mkdir(parents=True)
    lone.write_bytes((federation / "rounds" / "round_0003.safetensors").read_bytes())
    with pytest.raises(MissingPath, match=r"config.yaml is missing"):
        export_encoder(lone, tmp_path / "out.safetensors", plugins)
