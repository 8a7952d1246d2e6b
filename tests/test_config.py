"""Config composition: train.yaml + group files + dotted overrides, plugin config dirs, saved
configs, and the ``fmcore config`` / ``--help`` command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import fmcore
from omegaconf import DictConfig, OmegaConf

from fmcore.cli import main
from fmcore.config import (
    ConfigSources,
    as_dict,
    compose,
    config_sources,
    core_config_dir,
    to_yaml,
)
from fmcore.errors import ConfigError, UnknownChoice
from fmcore.plugin_manager import registry


def installed_or_image(domain: str, data: DictConfig) -> str:
    """The modality of an installed domain; image2d for the domains these tests invent."""
    plugins = registry()
    return plugins.modality_of(domain, data) if domain in plugins.domains else "image2d"


# fmcore's own config directory; the modalities resolve the methods' by_modality recipes (the
# default method, SimCLR, has one for video).
CORE = ConfigSources((core_config_dir(),), installed_or_image)


def core(*words: str) -> DictConfig:
    return compose(list(words), CORE)


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """A plugin's config directory: a new domain, a new encoder, a new group, a shadowing file."""
    root = tmp_path / "plugin_configs"
    files = {
        "domain/other.yaml": "domain:\n  name: other\ndata:\n  size: [8, 8]\n  channels: 3\n",
        # Same name as a core file: must never replace fmcore's digits.yaml.
        "domain/digits.yaml": "domain:\n  name: hijacked\nencoder:\n  tokenizer:\n"
        "    patch_size: 99\n",
        "encoder/vit_p8.yaml": "encoder:\n  name: vit_p8\n  embed_dim: 32\n  depth: 1\n"
        "  vit:\n    num_heads: 1\n  tokenizer:\n    patch_size: 8\n",
        "notify/slack.yaml": "notify:\n  kind: slack\n  channel: demo\n",
        "notify/email.yaml": "notify:\n  kind: email\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


ENCODERS = [
    *(f"mamba_{size}" for size in ("base", "small", "tiny")),
    *(f"mambar_{size}" for size in ("base", "small", "tiny")),
    *(f"vit_{size}" for size in ("base", "giant", "large", "small", "tiny")),
]


# --- defaults and group merge order ----------------------------------------------------------


def test_defaults_compose_digits_simclr_vit_tiny() -> None:
    config = core()
    assert config.domain.name == "digits"
    assert config.method.name == "simclr"
    assert config.encoder.name == "vit_tiny"
    assert config.encoder.embed_dim == 192
    assert as_dict(config.defaults) == {
        "encoder": "vit_tiny",
        "domain": "digits",
        "method": "simclr",
    }
    # train.yaml's own sections are there too.
    assert config.trainer.max_steps == 100
    assert config.run.dir is None


def test_choosing_an_encoder_keeps_the_common_encoder_keys() -> None:
    config = core("encoder=vit_small")
    assert config.encoder.name == "vit_small"
    assert config.encoder.embed_dim == 384
    assert config.encoder.vit.num_heads == 6
    # Keys only train.yaml's encoder section defines survive the merge, nested ones too.
    assert config.encoder.trunk == "vit"
    assert config.encoder.vit.mlp_ratio == 4.0
    assert config.encoder.vit.qkv_bias is True
    assert config.encoder.tokenizer.tubelet == 2
    assert config.encoder.tokenizer.num_groups == 64
    assert config.defaults.encoder == "vit_small"


def test_domain_overrides_the_encoders_tokenizer(plugin_dir: Path) -> None:
    # train.yaml says 16; the digits domain (merged after the encoder) says 4.
    assert core().encoder.tokenizer.patch_size == 4
    assert core("encoder=vit_small").encoder.tokenizer.patch_size == 4

    sources = ConfigSources((core_config_dir(), plugin_dir), installed_or_image)
    # An encoder file setting its own patch size still loses to the domain merged after it ...
    assert compose(["encoder=vit_p8"], sources).encoder.tokenizer.patch_size == 4
    # ... and wins over train.yaml when the domain says nothing about the tokenizer.
    other = compose(["encoder=vit_p8", "domain=other"], sources)
    assert other.encoder.tokenizer.patch_size == 8
    assert other.encoder.trunk == "vit"


def test_key_overrides_beat_every_group_file() -> None:
    config = core("encoder=vit_small", "encoder.tokenizer.patch_size=2", "encoder.embed_dim=96")
    assert config.encoder.tokenizer.patch_size == 2
    assert config.encoder.embed_dim == 96


# --- dotted overrides ------------------------------------------------------------------------


def test_override_values_are_typed_as_yaml() -> None:
    config = core(
        "trainer.max_steps=10",
        "trainer.lr=1e-4",
        "trainer.min_lr=0.5",
        "trainer.betas=[0.9,0.95]",
        "trainer.clip_grad=null",
        "trainer.compile=true",
        "resume=false",
        "trainer.device=cpu",
        "run.dir=runs/demo",
    )
    assert config.trainer.max_steps == 10 and type(config.trainer.max_steps) is int
    assert config.trainer.lr == pytest.approx(1e-4) and type(config.trainer.lr) is float
    assert config.trainer.min_lr == 0.5
    assert as_dict(config.trainer.betas) == [0.9, 0.95]
    assert config.trainer.clip_grad is None
    assert config.trainer.compile is True
    assert config.resume is False
    assert config.trainer.device == "cpu"
    assert config.run.dir == "runs/demo"


def test_values_that_are_not_numbers_stay_text() -> None:
    config = core("+run.tag=2024-01-01", "+run.note=nan", "+run.word=inf", "+run.empty=")
    assert config.run.tag == "2024-01-01"
    assert config.run.note == "nan"
    assert config.run.word == "inf"
    assert config.run.empty == ""
    # YAML's own spelling of special floats still works.
    assert math.isinf(core("trainer.clip_grad=.inf").trainer.clip_grad)


def test_a_list_element_can_be_overridden_by_index() -> None:
    assert as_dict(core("trainer.betas.1=0.95").trainer.betas) == [0.9, 0.95]
    with pytest.raises(ConfigError, match=r"trainer\.betas\.5"):
        core("trainer.betas.5=0.1")


def test_plus_adds_new_keys_also_under_missing_sections() -> None:
    config = core("+data.slide_mpp=0.25", "+extra.nested.deep=1")
    assert config.data.slide_mpp == 0.25
    assert config.extra.nested.deep == 1
    assert "slide_mpp" not in core().data


def test_unknown_key_names_it_lists_valid_keys_and_suggests_plus() -> None:
    with pytest.raises(ConfigError) as caught:
        core("trainer.max_stepz=7")
    message = str(caught.value)
    assert "unknown config key 'trainer.max_stepz'" in message
    assert "max_steps" in message and "batch_size" in message and "warmup_steps" in message
    assert "+trainer.max_stepz=" in message


def test_unknown_section_lists_the_keys_where_the_path_breaks() -> None:
    with pytest.raises(ConfigError) as caught:
        core("traner.max_steps=7")
    message = str(caught.value)
    assert "unknown config key 'traner.max_steps'" in message
    assert "<root>" in message and "trainer" in message and "encoder" in message
    assert "+traner.max_steps=" in message

    with pytest.raises(ConfigError, match=r"valid keys under 'trainer'.*max_steps"):
        core("trainer.nope.deep=1")


def test_a_key_below_a_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'trainer\.max_steps' is not a section"):
        core("trainer.max_steps.x=1")
    with pytest.raises(ConfigError, match=r"trainer\.betas"):
        core("trainer.betas.x.y=1")


def test_unknown_group_option_lists_the_valid_options() -> None:
    with pytest.raises(UnknownChoice) as caught:
        core("encoder=vit_huge")
    assert "vit_huge" in str(caught.value)
    assert caught.value.choices == ENCODERS
    with pytest.raises(UnknownChoice, match=r"unknown domain 'nowhere'; valid choices: digits"):
        core("domain=nowhere")


def test_a_word_without_equals_is_refused_with_the_syntax() -> None:
    with pytest.raises(ConfigError) as caught:
        core("trainer.max_steps")
    message = str(caught.value)
    assert "'trainer.max_steps' is not an override" in message
    assert "key=value" in message and "group=option" in message and "+new.key=value" in message
    with pytest.raises(ConfigError, match="no key"):
        core("=3")


def test_a_broken_interpolation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        core("+run.name=${nowhere}")
    assert core("+run.steps=${trainer.max_steps}").run.steps == 100


# --- plugin config directories ---------------------------------------------------------------


def test_plugin_dir_adds_an_option_to_an_existing_group(plugin_dir: Path) -> None:
    sources = ConfigSources((core_config_dir(), plugin_dir), installed_or_image)
    assert {"digits", "other"} <= set(sources.options("domain"))  # core options stay too
    config = compose(["domain=other"], sources)
    assert config.domain.name == "other"
    assert as_dict(config.data.size) == [8, 8]
    assert config.data.channels == 3
    assert config.defaults.domain == "other"
    # Without the plugin directory the option does not exist.
    with pytest.raises(UnknownChoice):
        core("domain=other")


def test_plugin_dir_adds_a_new_group(plugin_dir: Path) -> None:
    sources = ConfigSources((core_config_dir(), plugin_dir), installed_or_image)
    assert sources.groups() == [
        "encoder",
        "domain",
        "method",
        "embed",
        "eval",
        "federated",
        "logger",
        "notify",
    ]
    assert set(sources.options("notify")) == {"email", "slack"}
    # A group nobody chose contributes nothing.
    assert "notify" not in compose([], sources)
    config = compose(["notify=slack", "notify.channel=mine"], sources)
    assert as_dict(config.notify) == {"kind": "slack", "channel": "mine"}
    assert config.defaults.notify == "slack"
    with pytest.raises(UnknownChoice, match="email, slack"):
        compose(["notify=syslog"], sources)


def test_plugin_file_cannot_replace_a_core_file(plugin_dir: Path) -> None:
    sources = ConfigSources((core_config_dir(), plugin_dir), installed_or_image)
    assert sources.options("domain")["digits"] == core_config_dir() / "domain" / "digits.yaml"
    config = compose(["domain=digits"], sources)
    assert config.domain.name == "digits"
    assert config.encoder.tokenizer.patch_size == 4
    assert compose([], sources) == core()


# --- saved configs ---------------------------------------------------------------------------


def test_saved_config_reproduces_and_accepts_key_overrides(tmp_path: Path) -> None:
    original = core("encoder=vit_small", "trainer.max_steps=30", "+data.extra=1")
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(original))

    again = compose([], CORE, saved=saved)
    assert again == original
    assert as_dict(again.defaults) == as_dict(original.defaults)

    changed = compose(["trainer.max_steps=200", "+run.note=resumed"], CORE, saved=saved)
    assert changed.trainer.max_steps == 200
    assert changed.run.note == "resumed"
    assert changed.encoder.embed_dim == 384
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.max_stepz'"):
        compose(["trainer.max_stepz=1"], CORE, saved=saved)


def test_saved_config_refuses_group_choices(tmp_path: Path) -> None:
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(core()))
    with pytest.raises(ConfigError) as caught:
        compose(["encoder=vit_small"], CORE, saved=saved)
    assert "encoder=vit_small" in str(caught.value)
    assert "override single keys" in str(caught.value)


def test_missing_saved_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        compose([], CORE, saved=tmp_path / "nope.yaml")


# --- the command line ------------------------------------------------------------------------


def test_cli_config_show_prints_the_resolved_yaml(tmp_path: Path) -> None:
    result = fmcore("config", "show", "trainer.max_steps=7", "encoder=vit_small", cwd=tmp_path)
    shown = OmegaConf.create(result.stdout)
    assert shown.trainer.max_steps == 7
    assert shown.encoder.embed_dim == 384
    assert shown.domain.name == "digits"


def test_cli_unknown_key_exits_2_without_traceback(tmp_path: Path) -> None:
    result = fmcore("config", "show", "trainer.max_stepz=7", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "unknown config key 'trainer.max_stepz'" in result.stderr
    assert "max_steps" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_config_groups_lists_groups_and_options(tmp_path: Path) -> None:
    lines = fmcore("config", "groups", cwd=tmp_path).stdout.splitlines()
    groups = {line.split(":")[0]: line.split(":")[1].strip().split(", ") for line in lines}
    assert list(groups)[:3] == ["encoder", "domain", "method"]
    assert groups["encoder"] == ENCODERS
    assert "digits" in groups["domain"]
    assert "simclr" in groups["method"]


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["config", "show", "--help"]])
def test_help_explains_the_override_syntax(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for syntax in ("group=option", "key=value", "+key=value", "domain=pathology"):
        assert syntax in text


# --- per-modality recipes (method.by_modality) -------------------------------------------------

# The composer asks the installed domains for a modality; here every domain is a video domain.
VIDEO = ConfigSources((core_config_dir(),), lambda domain, data: "video")


def test_a_modality_recipe_is_merged_when_composed_and_its_table_dropped() -> None:
    config = compose(["method=mae"], VIDEO)
    assert config.method.mask_ratio == 0.9  # VideoMAE's, from mae.yaml's by_modality.video
    assert config.method.decoder.embed_dim == 384 and config.method.decoder.mlp_ratio == 4.0
    assert "by_modality" not in to_yaml(config)
    image = compose(["method=mae"], ConfigSources((core_config_dir(),), lambda d, data: "image2d"))
    assert image.method.mask_ratio == 0.75 and image.method.decoder.embed_dim == 512


def test_a_command_line_key_wins_over_the_modality_recipe() -> None:
    config = compose(["method=mae", "method.mask_ratio=0.8"], VIDEO)
    assert config.method.mask_ratio == 0.8
    assert config.method.decoder.embed_dim == 384  # the rest of the recipe still applies
    recipe = compose(["method=mae", "method.by_modality.video.mask_ratio=0.85"], VIDEO)
    assert recipe.method.mask_ratio == 0.85


def test_a_domain_recipe_follows_the_modality_recipe() -> None:
    """Recipe keys a domain adds (its name, and "<name>-<mode>") merge after the modality's:
    MAE on ophthalmology's OCT masks RETFound's 0.85, on its photographs the image default."""
    sources = config_sources(registry())
    fundus = compose(["domain=ophthalmology", "method=mae"], sources)
    oct_volumes = compose(["domain=ophthalmology", "data.mode=oct", "method=mae"], sources)
    oct_bscans = compose(
        ["domain=ophthalmology", "data.mode=oct", "data.oct_unit=bscan", "method=mae"], sources
    )
    assert fundus.method.mask_ratio == 0.75
    assert oct_volumes.method.mask_ratio == 0.85 and oct_bscans.method.mask_ratio == 0.85
    assert oct_volumes.method.decoder.embed_dim == 512  # no volume3d recipe: the image decoder
    mine = compose(
        ["domain=ophthalmology", "data.mode=oct", "method=mae", "method.mask_ratio=0.6"], sources
    )
    assert mine.method.mask_ratio == 0.6  # the command line still wins


def test_a_saved_config_runs_as_saved(tmp_path: Path) -> None:
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(compose(["method=mae", "method.mask_ratio=0.8"], VIDEO)))
    again = compose(["trainer.max_steps=3"], VIDEO, saved=saved)
    assert again.method.mask_ratio == 0.8 and again.method.decoder.embed_dim == 384


def test_a_misspelt_recipe_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"method\.by_modality\.video overrides an unknown key"):
        compose(["method=mae", "+method.by_modality.video.mask_ratoi=0.8"], VIDEO)


def test_a_recipe_needs_the_installed_domains_to_resolve() -> None:
    with pytest.raises(ConfigError, match="by_modality without the installed domains"):
        compose(["method=mae"], ConfigSources((core_config_dir(),)))
    bare = ConfigSources((core_config_dir(),))
    assert "by_modality" not in compose(["method=ijepa"], bare).method  # nothing to resolve


def test_the_modality_of_a_domain_can_follow_its_data_section() -> None:
    from fmcore.plugin_manager import registry

    plugins = registry()
    assert plugins.modality_of("radiology", OmegaConf.create({"mode": "xray"})) == "image2d"
    assert plugins.modality_of("radiology", OmegaConf.create({"mode": "ct"})) == "volume3d"
    assert plugins.modality_of("digits", OmegaConf.create({})) == "image2d"


# --- typed sections (fmcore.config_sections) ---------------------------------------------------


def test_the_core_sections_are_typed_when_composed() -> None:
    config = core("trainer.max_steps=7", "trainer.lr=1e-3", "run.seed=3")
    assert isinstance(config.trainer.max_steps, int) and config.trainer.max_steps == 7
    assert config.trainer.lr == 0.001 and config.run.seed == 3


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("trainer.max_steps=ten", r"trainer\.max_steps: Value 'ten' .* Integer"),
        ("trainer.lr=fast", r"trainer\.lr: Value 'fast' .* Float"),
        ("trainer.precision=fp16", r"trainer\.precision must be one of auto, bf16, fp32"),
        ("trainer.progress=loud", r"trainer\.progress must be one of auto, bar, lines, none"),
        ("trainer.lr_scaling=cubic", r"trainer\.lr_scaling must be one of null, linear, sqrt"),
        ("trainer.max_steps=0", r"trainer\.max_steps must be at least 1"),
        ("trainer.betas=[0.9]", r"trainer\.betas must be two numbers"),
        ("run.seed=abc", r"run\.seed: Value 'abc'"),
    ],
)
def test_a_wrongly_typed_core_key_is_named_when_composed(word: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        core(word)


def test_the_engine_reads_the_trainer_section_as_a_dataclass() -> None:
    from fmcore.config_sections import TrainerSection, trainer_section

    trainer = trainer_section(core("trainer.max_steps=7", "+trainer.note=kept"))
    assert isinstance(trainer, TrainerSection) and trainer.max_steps == 7
    assert trainer.betas == [0.9, 0.999]


@pytest.mark.parametrize(
    ("words", "named"),
    [
        (["eval=knn", "eval.k=0"], r"eval\.k must be at least 1, not 0"),
        (["eval=knn", "eval.temperature=0"], r"eval\.temperature must be above 0"),
        (["eval=knn", "eval.bootstrap=many"], r"eval\.bootstrap: Value 'many'"),
        (["eval=linear", "eval.val_fraction=1.0"], r"eval\.val_fraction must lie in \(0, 1\)"),
        (["eval=linear", "eval.lrs=[]"], r"eval\.lrs must list at least one"),
        (["eval=fewshot", "eval.shots=[one]"], r"eval\.shots"),
        (["eval=mil", "eval.epochs=1.5"], r"eval\.epochs"),
    ],
)
def test_each_protocols_eval_section_is_typed_by_its_own_schema(words, named) -> None:
    with pytest.raises(ConfigError, match=named):
        core(*words)


def test_a_typed_eval_section_keeps_its_values_and_added_keys() -> None:
    config = core("eval=knn", "eval.k=5", "+eval.note=ablation")
    assert config.eval.k == 5 and config.eval.temperature == 0.07 and config.eval.note == "ablation"
    assert core("eval=mil").eval.seed == core().run.seed  # ${run.seed}, resolved then typed
