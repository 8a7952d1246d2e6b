"""The video domain on files written by real encoders (PyAV's FFmpeg: libx264, libx265, libvpx,
MJPEG, SVT-AV1) and real DICOM cine loops (pydicom's own ultrasound file, and one pydicom
writes): probing, clip sampling, decoding, and what happens to bad files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="needs the video extra: pip install -e '.[video]'")
pytest.importorskip("decord")  # after PyAV: see fmcore.video_files.probe.import_decord

from omegaconf import OmegaConf
from pydicom.data import get_testdata_file

from fmcore.config import core_config_dir
from fmcore.domains.video.data import ReaderFallback, Video
from fmcore.errors import ConfigError
from fmcore.video_files.writers import write_cine, write_video

FRAMES = 30
FPS = 10.0
CODECS = [  # file, codec, pixel format: every container the domain promises
    ("h264.mp4", "libx264", "yuv420p"),
    ("h265.mkv", "libx265", "yuv420p"),
    ("ffv1.mkv", "ffv1", "yuv420p"),
    ("vp9.webm", "libvpx-vp9", "yuv420p"),
    ("vp8.webm", "libvpx", "yuv420p"),
    ("mjpeg.avi", "mjpeg", "yuvj420p"),
    ("h264.mov", "libx264", "yuv420p"),
]


def numbered_frames(count: int = FRAMES, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame i is uniformly grey at level 16 + 7 i, so a decoded frame says which it is."""
    levels = 16 + 7 * np.arange(count)
    return np.broadcast_to(levels[:, None, None, None], (count, height, width, 3)).astype(np.uint8)


def frame_numbers(clip: np.ndarray) -> list[int]:
    """The frame each (C, T, H, W) uint8 clip frame shows, read from its grey level."""
    assert clip.dtype == np.uint8  # the transport rule: the decoded bytes, no floats
    levels = clip.mean(axis=(0, 2, 3))
    return [round((level - 16) / 7) for level in levels]


def video_domain(root: Path, cache: Path, **settings: object) -> Video:
    raw = OmegaConf.load(core_config_dir() / "domain" / "video.yaml")
    raw.data.root = str(root)
    raw.data.frames, raw.data.frame_size, raw.data.sampling_rate = 4, 32, 3
    for key, value in settings.items():
        OmegaConf.update(raw, f"data.{key}", value)
    return Video(raw.data, cache)


def clip_of(domain: Video, name: str) -> tuple[list[int], np.ndarray]:
    """Every reference of file ``name``: its frame indices and the first clip's decoded data."""
    refs = [ref for ref in domain.index("train") if ref.video_id == name]
    assert refs, f"{name} was not indexed: {domain.bad_inputs}"
    return list(refs[0].indices), domain.load(refs[0]).data.numpy()


@pytest.mark.parametrize(("name", "codec", "pixel_format"), CODECS)
def test_each_container_and_codec_decodes_the_frames_its_clip_names(
    tmp_path: Path, name: str, codec: str, pixel_format: str
) -> None:
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / name, numbered_frames(), FPS, codec, pixel_format)
    domain = video_domain(tmp_path / "videos", tmp_path / "cache")
    indices, clip = clip_of(domain, name)
    assert clip.shape == (3, 4, 32, 32)
    assert indices == list(range(indices[0], indices[0] + 12, 3))  # every 3rd frame
    assert frame_numbers(clip) == indices
    info = domain.index("train")[0].info
    assert (info.reader, info.frames, info.fps) == ("decord", FRAMES, FPS)


def test_a_file_decord_cannot_open_is_read_with_pyav_and_named_once(tmp_path: Path) -> None:
    """decord 0.6 finds no video stream in AV1 MP4 files; PyAV decodes them."""
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "av1.mp4", numbered_frames(height=64), FPS, "libsvtav1")
    domain = video_domain(tmp_path / "videos", tmp_path / "cache")
    with pytest.warns(ReaderFallback, match=r"av1\.mp4: decord cannot read it \(cannot find"):
        indices, clip = clip_of(domain, "av1.mp4")
        info = domain.index("train")[0].info
    assert frame_numbers(clip) == indices
    assert (info.reader, info.frames) == ("pyav", FRAMES)
    assert info.fps == pytest.approx(FPS)


def test_a_rotated_file_is_turned_as_its_display_matrix_says(tmp_path: Path) -> None:
    """A phone's portrait clip: stored 48 x 64 with a white top-left corner, displayed turned
    90 degrees counter-clockwise, so the corner shows at the bottom left of a 64 x 48 frame."""
    frames = np.zeros((FRAMES, 48, 64, 3), np.uint8)
    frames[:, :16, :16] = 255
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "portrait.mp4", frames, FPS, rotation=90)
    domain = video_domain(
        tmp_path / "videos", tmp_path / "cache", frame_size=None, size=[4, 64, 48]
    )
    with pytest.warns(ReaderFallback, match="rotated by 90 degrees"):
        _, clip = clip_of(domain, "portrait.mp4")
    bright = clip[:, 0].mean(axis=0) > 0.5  # (64, 48)
    assert bright[-8:, :8].all() and not bright[:8, :8].any() and not bright[:8, -8:].any()


def test_variable_frame_rate_clips_follow_the_files_timestamps(tmp_path: Path) -> None:
    """20 frames 50 ms apart, then 10 frames 200 ms apart: sampled at 5 fps, a clip takes the
    frame shown every 200 ms of the file's own clock."""
    times = [0.05 * i for i in range(20)] + [1.0 + 0.2 * i for i in range(10)]
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "vfr.mp4", numbered_frames(), FPS, times=times)
    domain = video_domain(
        tmp_path / "videos",
        tmp_path / "cache",
        fps=5,
        frames=8,
        temporal_jitter="uniform",
        clips_per_video=2,
    )
    refs = domain.index("train")
    assert refs[0].info.timestamps == pytest.approx(times, abs=1e-3)
    for ref, start in zip(refs, (0.0, times[-1] - 7 * 0.2), strict=True):
        wanted = start + 0.2 * np.arange(8)
        by_hand = [max(i for i, t in enumerate(times) if t <= w + 1e-6) for w in wanted]
        assert list(ref.indices) == by_hand
        assert frame_numbers(domain.load(ref).data.numpy()) == by_hand


def test_dicom_cine_loops_read_with_their_frame_time(tmp_path: Path) -> None:
    """pydicom's own ultrasound file (30 YBR JPEG frames, FrameTime 33.33 ms) and a greyscale
    cine that pydicom writes here."""
    (tmp_path / "videos").mkdir()
    shipped = Path(get_testdata_file("examples_ybr_color.dcm"))
    (tmp_path / "videos" / "ultrasound.dcm").write_bytes(shipped.read_bytes())
    write_cine(tmp_path / "videos" / "grey.dcm", numbered_frames()[..., 0], 100.0, "grey")
    domain = video_domain(tmp_path / "videos", tmp_path / "cache")
    refs = {ref.video_id: ref for ref in domain.index("train")}
    assert refs["ultrasound.dcm"].info.frames == 30
    assert refs["ultrasound.dcm"].info.fps == pytest.approx(30.0, rel=1e-3)
    colour = domain.load(refs["ultrasound.dcm"]).data
    assert colour.shape == (3, 4, 32, 32) and 0 < float(colour.float().mean()) < 255
    assert refs["grey.dcm"].info.fps == pytest.approx(10.0)
    assert frame_numbers(domain.load(refs["grey.dcm"]).data.numpy()) == list(
        refs["grey.dcm"].indices
    )


def test_bad_files_are_named_with_their_reason_and_skipped(tmp_path: Path) -> None:
    import av

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "good.mp4", numbered_frames(), FPS)
    whole = (videos / "good.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # index (moov) at the end
    (videos / "empty.mp4").write_bytes(b"")
    for name in ("no_frames.avi", "no_stream.mp4"):  # FFmpeg keeps an AVI's empty stream
        with av.open(str(videos / name), "w") as container:
            stream = container.add_stream("mjpeg", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
            container.start_encoding()
    write_cine(videos / "still.dcm", numbered_frames(1)[..., 0], 100.0, "still")
    domain = video_domain(videos, tmp_path / "cache")
    refs = domain.index("train")
    assert {ref.video_id for ref in refs} == {"good.mp4"}
    reasons = dict(message.split(": ", 1) for message in domain.bad_inputs)
    assert set(reasons) == {
        str(videos / n)
        for n in ("truncated.mp4", "empty.mp4", "no_frames.avi", "no_stream.mp4", "still.dcm")
    }
    assert "cannot be opened" in reasons[str(videos / "truncated.mp4")]
    assert "has no frames" in reasons[str(videos / "no_frames.avi")]
    assert "has no video stream" in reasons[str(videos / "no_stream.mp4")]
    assert "single-frame" in reasons[str(videos / "still.dcm")]


def test_a_file_damaged_after_indexing_is_a_skipped_sample_naming_it(tmp_path: Path) -> None:
    from fmcore.errors import BadSample

    (tmp_path / "videos").mkdir()
    path = tmp_path / "videos" / "clip.mp4"
    write_video(path, numbered_frames(), FPS)
    domain = video_domain(tmp_path / "videos", tmp_path / "cache")
    ref = domain.index("train")[0]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BadSample, match=r"clip\.mp4: frames"):
        video_domain(tmp_path / "videos", tmp_path / "cache").load(ref)


def test_short_videos_repeat_their_last_frame_or_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "short.mp4", numbered_frames(5), FPS)
    padded = video_domain(tmp_path / "videos", tmp_path / "cache")
    indices, clip = clip_of(padded, "short.mp4")
    assert indices == [0, 3, 4, 4]
    assert frame_numbers(clip) == [0, 3, 4, 4]
    skipping = video_domain(tmp_path / "videos", tmp_path / "cache", short_videos="skip")
    assert skipping.index("train") == []
    assert skipping.bad_inputs == [
        f"{tmp_path / 'videos' / 'short.mp4'}: 5 frames: shorter than a clip"
    ]


def test_the_probe_cache_is_read_for_unchanged_files_and_redone_for_changed_ones(
    tmp_path: Path,
) -> None:
    videos, cache = tmp_path / "videos", tmp_path / "cache"
    videos.mkdir()
    write_video(videos / "a.mp4", numbered_frames(), FPS)
    video_domain(videos, cache).index("train")
    index_file = cache / "video" / "index.json"
    entries = json.loads(index_file.read_text())
    (entry,) = entries.values()
    entry["facts"]["frames"] = 13  # only a cached entry can say this
    index_file.write_text(json.dumps(entries))
    assert video_domain(videos, cache).index("train")[0].info.frames == 13
    write_video(videos / "a.mp4", numbered_frames(20), FPS)  # a new size and time: probed again
    assert video_domain(videos, cache).index("train")[0].info.frames == 20


def test_clips_are_drawn_once_per_video_and_spread_when_uniform(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", numbered_frames(), FPS)
    random = video_domain(tmp_path / "videos", tmp_path / "cache", clips_per_video=3)
    assert random.index("train") == random.index("train")
    assert len({ref.indices for ref in random.index("train")}) == 3
    uniform = video_domain(
        tmp_path / "videos", tmp_path / "cache", clips_per_video=3, temporal_jitter="uniform"
    )
    starts = [ref.indices[0] for ref in uniform.index("train")]
    assert starts == [0, 10, 20]  # room of 30 - 10 frames, spread over 0, 0.5, 1


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("temporal_jitter", "sometimes", "data.temporal_jitter=sometimes"),
        ("short_videos", "stretch", "data.short_videos=stretch"),
        ("sampling_rate", 0, "data.sampling_rate=0"),
    ],
)
def test_wrong_settings_are_named(tmp_path: Path, key: str, value: object, named: str) -> None:
    (tmp_path / "videos").mkdir()
    with pytest.raises(ConfigError, match=named):
        video_domain(tmp_path / "videos", tmp_path / "cache", **{key: value}).index("train")


def test_no_fallback_warning_for_files_decord_reads(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", numbered_frames(), FPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReaderFallback)
        video_domain(tmp_path / "videos", tmp_path / "cache").index("train")


@pytest.mark.parametrize("frame_size", [16, 24, 48])
def test_sizes_decord_cannot_resize_to_are_resized_after_decoding(
    tmp_path: Path, frame_size: int
) -> None:
    """decord 0.6 fails on some resize targets (dmlc/decord#93, #336): 16, 24 and 48 px from a
    64 px file among them."""
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", numbered_frames(height=64), FPS)
    domain = video_domain(tmp_path / "videos", tmp_path / "cache", frame_size=frame_size)
    indices, clip = clip_of(domain, "a.mp4")
    assert clip.shape == (3, 4, frame_size, frame_size)
    assert frame_numbers(clip) == indices


def test_a_file_whose_probe_fails_unexpectedly_is_a_bad_input_not_a_crash(tmp_path: Path) -> None:
    """A cine whose NumberOfFrames is not a number ('1A', as in a file pydicom ships)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_cine(videos / "odd.dcm", numbered_frames(4)[..., 0], 100.0, "odd")
    write_video(videos / "good.mp4", numbered_frames(), FPS)
    element = b"\x28\x00\x08\x00IS\x02\x004 "  # (0028,0008) NumberOfFrames, IS, "4 "
    data = (videos / "odd.dcm").read_bytes()
    assert data.count(element) == 1
    (videos / "odd.dcm").write_bytes(data.replace(element, element[:-2] + b"1A"))
    domain = video_domain(videos, tmp_path / "cache")
    assert {ref.video_id for ref in domain.index("train")} == {"good.mp4"}
    (message,) = domain.bad_inputs
    assert message.startswith(f"{videos / 'odd.dcm'}: cannot be probed: ValueError")


def test_a_worker_forked_after_the_parent_decoded_opens_its_own_readers(tmp_path: Path) -> None:
    """The parent decodes first (a reconstruction picture, an in-process evaluation), then
    forks a data-loader worker: the worker must not use the parent's decord readers, whose
    decoding threads it does not have (it would hang; ``timeout`` turns that into a failure)."""
    from torch.utils.data import DataLoader

    from fmcore.engine.data import DomainDataset, collate

    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", numbered_frames(), FPS)
    domain = video_domain(tmp_path / "videos", tmp_path / "cache", clips_per_video=2)
    refs = domain.index("train")
    parent = domain.load(refs[0]).data
    loader = DataLoader(
        DomainDataset(domain, refs),
        batch_size=2,
        num_workers=1,
        collate_fn=collate,
        multiprocessing_context="fork",
        timeout=60,
    )
    batch, skipped = next(iter(loader))
    assert skipped == [] and np.array_equal(batch.data[0].numpy(), parent.numpy())
