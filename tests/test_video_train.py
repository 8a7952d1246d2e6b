"""`fmcore train domain=video` end to end on the embedded samples, as a user runs it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY_ENCODER, clean_run_summary, fmcore

pytest.importorskip("av", reason="needs the video extra: pip install -e '.[video]'")
pytest.importorskip("decord")

from fmcore.config import compose, config_sources
from fmcore.domains.video.data import Video
from fmcore.engine.trainer import train
from fmcore.plugin_manager import registry

# 4-frame clips of 32 x 32 pixels, tubelets of 2 x 8 x 8: 2 x 4 x 4 = 32 tokens.
SMALL_CLIPS = [
    "domain=video",
    "data.frames=4",
    "data.frame_size=32",
    "encoder.tokenizer.patch_size=8",
    *TINY_ENCODER,
    "trainer.batch_size=4",
    "trainer.num_workers=1",
    "trainer.device=cpu",
    "trainer.max_steps=2",
]


@pytest.mark.slow
def test_mae_trains_on_the_embedded_videos_of_every_container(tmp_path: Path) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    result = fmcore(
        "train",
        *SMALL_CLIPS,
        "method=mae",
        f"run.dir={run}",
        f"run.cache_dir={cache}",
        cwd=tmp_path,
    )
    assert "skipped bad input" not in result.stderr
    clean_run_summary(run)
    assert (run / "encoder.safetensors").exists()
    sample = sorted(p.name for p in (cache / "sample-data" / "video").iterdir())
    assert sample == [
        "cine.dcm",
        "clip_h264.mov",
        "clip_h264.mp4",
        "clip_h265.mkv",
        "clip_mjpeg.avi",
        "clip_vp8.webm",
        "clip_vp9.webm",
    ]


@pytest.fixture(scope="module")
def video_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (embedded sample, probe index) for the in-process runs of this module."""
    return tmp_path_factory.mktemp("video-cache")


@pytest.mark.parametrize(
    "preset",
    ["aim_small", "arm_small", "digpt_small", "ijepa_small", "dinov2_small", "simclr_small"],
)
def test_every_method_trains_a_step_on_real_clips(
    tmp_path: Path, video_cache: Path, preset: str, one_thread: None
) -> None:
    """In process: each method's small preset, composed for video (its by_modality recipe),
    takes optimizer steps on clips decoded from the embedded files."""
    words = [*SMALL_CLIPS, "trainer.num_workers=0", f"method={preset}"]
    run = tmp_path / "run"
    config = compose(
        [*words, f"run.dir={run}", f"run.cache_dir={video_cache}"], config_sources(registry())
    )
    train(config, registry())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_samples"] == 0
    assert (run / "encoder.safetensors").exists()


def test_the_labelled_sample_splits_by_video_with_both_classes_everywhere(tmp_path: Path) -> None:
    config = compose(
        ["domain=video", "data.sample=labelled", f"run.cache_dir={tmp_path}"],
        config_sources(registry()),
    )
    domain = Video(config.data, tmp_path)
    clips = int(config.data.clips_per_video)
    for split, videos in (("train", 128), ("val", 64), ("test", 64)):
        refs = domain.index(split)
        assert len(refs) == videos * clips
        assert Counter(ref.label for ref in refs) == {
            0: videos * clips // 2,
            1: videos * clips // 2,
        }
    train = {ref.video_id for ref in domain.index("train")}
    assert train.isdisjoint(ref.video_id for ref in domain.index("val"))
    assert domain.bad_inputs == []


LABELLED_CLIPS = [
    "domain=video",
    "data.sample=labelled",
    "data.frames=4",
    "data.frame_size=16",
    "encoder.tokenizer.patch_size=8",
]


def test_per_video_features_are_the_mean_of_the_videos_clips(tmp_path: Path) -> None:
    """``eval.group_by=video``: one feature per video, the mean of its clips' features,
    checked against a sum kept per video by hand (raw pixels as the features)."""
    import torch

    from fmcore.errors import ConfigError
    from fmcore.eval.features import RawPixels, extract_features

    config = compose([*LABELLED_CLIPS, f"run.cache_dir={tmp_path}"], config_sources(registry()))
    domain = Video(config.data, tmp_path)
    grouped = extract_features(RawPixels(), domain, "val", kind="pixels", group_by="video")
    sums: dict[str, torch.Tensor] = {}
    counts: Counter[str] = Counter()
    labels: dict[str, int] = {}
    for ref in domain.index("val"):
        sample = domain.load(ref)
        pixels = domain.normalize(sample.data[None].float() / 255).flatten()  # uint8 clip
        sums[ref.video_id] = sums.get(ref.video_id, 0) + pixels
        counts[ref.video_id] += 1
        labels[ref.video_id] = sample.label
    assert len(sums) == 64 and set(counts.values()) == {int(config.data.clips_per_video)}
    by_hand = torch.stack([sums[video] / counts[video] for video in sums])
    torch.testing.assert_close(grouped.features, by_hand, rtol=1e-5, atol=1e-6)
    assert grouped.labels.tolist() == [labels[video] for video in sums]
    with pytest.raises(ConfigError, match=r"eval.group_by=slide: .* carry start, video"):
        extract_features(RawPixels(), domain, "val", kind="pixels", group_by="slide")


def test_embed_writes_each_clips_video_and_start_frame(tmp_path: Path) -> None:
    from safetensors import safe_open

    out = tmp_path / "features"
    fmcore(
        "embed",
        "checkpoint=random",
        *LABELLED_CLIPS,
        "encoder.depth=2",
        "encoder.embed_dim=32",
        "encoder.vit.num_heads=2",
        "trainer.device=cpu",
        "trainer.num_workers=0",
        "embed.split=val",
        f"embed.out={out}",
        f"run.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    config = compose(
        [*LABELLED_CLIPS, f"run.cache_dir={tmp_path / 'cache'}"], config_sources(registry())
    )
    refs = Video(config.data, tmp_path / "cache").index("val")
    written, ids = [], []
    for shard in sorted(out.glob("shard-*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            written += json.loads(handle.metadata()["sample_meta"])
            ids += json.loads(handle.metadata()["sample_ids"])
            assert handle.get_tensor("features").shape[1] == 32
    assert written == [{"video": ref.video_id, "start": ref.indices[0]} for ref in refs]
    assert ids == [f"{ref.path} frames {ref.indices[0]}-{ref.indices[-1]}" for ref in refs]
