"""The robotics domain: frames and short clips of robot demonstrations, from LeRobot datasets
(:mod:`.lerobot`) or HDF5 files (:mod:`.hdf5_episodes`) under ``data.root``.

``index`` reads the episodes, probes each video file once (the video domain's probe, cached by
path, size and modification time), locates every episode frame in its file by timestamp, and
leaves out the episodes the files do not back as bad inputs with their reason. A sample starts
every ``data.frame_step`` frames of an episode: ``data.frames`` frames ``data.stride`` apart
(one frame: an image; more: a clip), from each camera separately or all cameras stacked along
channels (``data.camera_mode``), with the state and the next ``data.action_chunk`` actions in
its reference. Splits are by episode (a stable hash of its id), so one episode's frames never
straddle train and test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from fmcore.domain import Domain, Sample
from fmcore.domains.robotics.closed_loop import ReachingLoop
from fmcore.domains.robotics.episodes import ArrayFrames, Episode, UnusableEpisode, VideoFrames
from fmcore.domains.robotics.hdf5_episodes import Hdf5Layout, hdf5_files, read_hdf5
from fmcore.domains.robotics.lerobot import BadEpisodes, lerobot_datasets, read_lerobot
from fmcore.domains.robotics.reaching import CAMERAS
from fmcore.domains.robotics.refs import CameraRead, FrameRef
from fmcore.errors import BadSample, ConfigError
from fmcore.labels import hash_position
from fmcore.video_files.probe import VideoInfo, probe_all
from fmcore.video_files.readers import ClipReader, fit_frames

FORMATS = ("lerobot", "hdf5")
CAMERA_MODES = ("separate", "stack")
LABELS = ("none", "task")
SPLITS = ("train", "val", "test", "all")
SAMPLE_VERSION = 2  # bump when the embedded sample changes
FRAME_TOLERANCE = 0.5  # frame periods: an episode frame with no video frame this near is missing


class Robotics(Domain):
    name = "robotics"
    requires = ("pyarrow", "h5py", "decord", "av")
    extra = "robotics"
    splits = SPLITS
    partition_keys = ("episode", "task", "dataset")

    def __init__(self, data: DictConfig, cache_dir: Path) -> None:
        super().__init__(data, cache_dir)
        self.format = _choice(data, "format", FORMATS)
        self.camera_mode = _choice(data, "camera_mode", CAMERA_MODES)
        self.label = _choice(data, "label", LABELS)
        for key in ("frames", "stride", "frame_step", "action_chunk"):
            if int(data[key]) < 1:
                raise ConfigError(f"data.{key}={data[key]}: give a whole number of at least 1")
        fractions = [float(f) for f in data.split_fractions]
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError(
                f"data.split_fractions={fractions}: three shares (train, val, test) summing to 1"
            )
        self.reader = ClipReader(self.sample_size[-2:])
        self._hdf5: dict[str, Any] = {}
        self._owner = os.getpid()

    @classmethod
    def modality_for(cls, data: DictConfig) -> str:
        return "image2d" if int(data.frames) == 1 else "video"

    @property
    def sample_name(self) -> str:
        """The embedded sample's folder, versioned: a cache written by an earlier version (48
        episodes) is not taken for this one."""
        return f"{self.name}-v{SAMPLE_VERSION}"

    @property
    def sample_size(self) -> tuple[int, ...]:
        side = int(self.data.frame_size)
        frames = int(self.data.frames)
        return (side, side) if frames == 1 else (frames, side, side)

    @property
    def channels(self) -> int:
        if self.camera_mode == "separate":
            return 3
        cameras = self.data.get("cameras")
        if not cameras:
            raise ConfigError("data.camera_mode=stack needs data.cameras: the cameras to stack")
        return 3 * len(cameras)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_hdf5": {}}  # file handles stay in their process

    # -- index -----------------------------------------------------------------------------

    def find_samples(self, split: str) -> Sequence[FrameRef]:
        episodes = self.episodes()
        tasks = sorted({episode.task for episode in episodes})
        refs: list[FrameRef] = []
        for episode, reads in self._located(episodes):
            if split != "all" and self.episode_split(episode.id) != split:
                continue
            label = tasks.index(episode.task) if self.label == "task" else -1
            refs.extend(self._frame_refs(episode, reads, label))
        return refs

    def episodes(self) -> list[Episode]:
        """Every usable episode under ``data.root``; bad ones are reported and left out."""
        root = self.resolve_root()
        lerobot = self.format == "lerobot"
        sources = lerobot_datasets(root) if lerobot else hdf5_files(root)
        if not sources:
            raise ConfigError(
                f"data.root={root} holds no LeRobot dataset (a folder with meta/info.json);"
                " for HDF5 files set data.format=hdf5"
                if lerobot
                else f"data.root={root} holds no .hdf5 / .h5 file"
            )
        found: list[Episode] = []
        for path in sources:
            try:
                usable, bad = self._read_source(path, _source_name(path, root))
            except UnusableEpisode as error:
                self.report_bad_input(path, str(error))
                continue
            for where, reason in bad:
                self.report_bad_input(where, reason)
            found.extend(usable)
        return found

    def _read_source(self, path: Path, source: str) -> tuple[list[Episode], BadEpisodes]:
        if self.format == "lerobot":
            return read_lerobot(path, source, str(self.data.state_key), str(self.data.action_key))
        return read_hdf5(path, source, Hdf5Layout.from_config(self.data.hdf5))

    def episode_split(self, episode_id: str) -> str:
        """train, val or test for an episode, from a stable hash of its id (the same on every
        machine and run, and independent of the other episodes)."""
        position = hash_position(episode_id)
        train, val, _ = (float(f) for f in self.data.split_fractions)
        return "train" if position < train else "val" if position < train + val else "test"

    def _cameras(self, episode: Episode) -> list[str]:
        wanted = self.data.get("cameras")
        if not wanted:
            return sorted(episode.cameras)
        missing = [str(c) for c in wanted if str(c) not in episode.cameras]
        if missing:
            raise UnusableEpisode(
                f"has no camera {', '.join(missing)} (data.cameras); it has"
                f" {', '.join(sorted(episode.cameras))}"
            )
        return [str(c) for c in wanted]

    def _located(self, episodes: list[Episode]) -> Iterator[tuple[Episode, dict[str, CameraRead]]]:
        """Each episode with, per camera, every frame's position in its file (a video frame
        number, found by timestamp, or an HDF5 row). Episodes a video does not cover are
        reported and left out."""
        videos = sorted(
            {f.path for e in episodes for f in e.cameras.values() if isinstance(f, VideoFrames)}
        )
        probes = probe_all(
            [Path(p) for p in videos],
            self.cache_dir / "robotics" / "videos.json",
            workers=int(self.data.get("index_workers") or 4),
        )
        infos = dict(zip(videos, probes, strict=True))
        for episode in episodes:
            try:
                reads = {
                    camera: _whole_episode(episode, camera, infos)
                    for camera in self._cameras(episode)
                }
            except UnusableEpisode as error:
                self.report_bad_input(episode.where, str(error))
                continue
            yield episode, reads

    def _frame_refs(
        self, episode: Episode, reads: dict[str, CameraRead], label: int
    ) -> list[FrameRef]:
        """A sample every ``data.frame_step`` frames: the clip that ends at its frame (the
        earlier frames ``data.stride`` apart, the first frame repeated at the episode's start,
        so a clip never shows what the actions from its frame on bring about), its state and
        its next ``data.action_chunk`` actions (the last one repeated at the episode's end)."""
        frames, stride = int(self.data.frames), int(self.data.stride)
        chunk = int(self.data.action_chunk)
        last = episode.length - 1
        refs = []
        for frame in range(0, episode.length, int(self.data.frame_step)):
            clip = np.maximum(frame - (frames - 1 - np.arange(frames)) * stride, 0)
            chunk_rows = np.minimum(frame + np.arange(chunk), last)
            state = tuple(float(v) for v in episode.states[frame])
            actions = tuple(float(v) for v in episode.actions[chunk_rows].reshape(-1))
            for group in self.camera_groups(list(reads)):
                camera_reads = tuple(
                    reads[camera]._replace(indices=tuple(reads[camera].indices[i] for i in clip))
                    for camera in group
                )
                refs.append(
                    FrameRef(
                        episode=episode.id,
                        source=episode.source,
                        task=episode.task,
                        frame=frame,
                        timestamp=float(episode.timestamps[frame]),
                        reads=camera_reads,
                        state=state,
                        actions=actions,
                        label=label,
                    )
                )
        return refs

    # -- load ------------------------------------------------------------------------------

    def load(self, ref: FrameRef) -> Sample:
        parts = [self._read(read) for read in ref.reads]  # each (T, H, W, 3) uint8
        pixels = np.concatenate(parts, axis=-1).transpose(3, 0, 1, 2)  # (C, T, H, W)
        if int(self.data.frames) == 1:
            pixels = pixels[:, 0]
        # Contiguous: the collate stacks those many times faster than channel-last views.
        return Sample(
            data=torch.from_numpy(np.ascontiguousarray(pixels)),
            label=ref.label,
            meta={
                "episode": ref.episode,
                "frame": ref.frame,
                "timestamp": ref.timestamp,
                "camera": "+".join(read.camera for read in ref.reads),
                "task": ref.task,
            },
        )

    def _read(self, read: CameraRead) -> np.ndarray:
        if read.info is not None:
            return self.reader.read(read.path, read.info, read.indices)
        try:
            dataset = self._hdf5_file(read.path)[read.key]
            unique = sorted(set(read.indices))  # h5py reads increasing rows only
            block = dataset[unique]
            frames = block[[unique.index(i) for i in read.indices]]
        except (OSError, KeyError, ValueError) as error:
            raise BadSample(read.path, f"{read.key} rows {read.indices}: {error}") from error
        return fit_frames(frames, self.sample_size[-2:])

    def _hdf5_file(self, path: str) -> Any:
        import h5py

        if self._owner != os.getpid():  # a forked worker opens its own handles
            self._hdf5, self._owner = {}, os.getpid()
        if path not in self._hdf5:
            self._hdf5[path] = h5py.File(path, "r")
        return self._hdf5[path]

    def closed_loop(self) -> ReachingLoop | None:
        """The embedded sample's simulator, for single frames (a policy on clips would need
        the frames before the first); None for a user's recorded data."""
        if self.data.get("root") or int(self.data.frames) != 1:
            return None
        cameras = [str(c) for c in self.data.get("cameras") or sorted(CAMERAS)]
        return ReachingLoop(self.camera_groups(cameras), int(self.data.frame_size))

    def camera_groups(self, cameras: list[str]) -> list[list[str]]:
        """The cameras of each sample of a time step, in order: one each, or all stacked."""
        return [[c] for c in cameras] if self.camera_mode == "separate" else [cameras]

    def normalize(self, views: torch.Tensor) -> torch.Tensor:
        """``data.mean`` / ``data.std`` of one camera's RGB, repeated over stacked cameras."""
        cameras = self.channels // 3
        mean, std = list(self.data.mean), list(self.data.std)
        shape = (1, -1) + (1,) * (views.dim() - 2)
        mean_t = views.new_tensor(mean * (cameras if len(mean) == 3 else 1)).view(shape)
        std_t = views.new_tensor(std * (cameras if len(std) == 3 else 1)).view(shape)
        return (views - mean_t) / std_t

    # -- partitions and sample -------------------------------------------------------------

    def partition_key(self, ref: FrameRef, by: str) -> str:
        return {"episode": ref.episode, "task": ref.task, "dataset": ref.source}[by]

    def write_sample_data(self, directory: Path) -> None:
        from fmcore.domains.robotics.sample_data import write_sample

        write_sample(directory)


def _choice(data: DictConfig, key: str, choices: tuple[str, ...]) -> str:
    value = str(data.get(key) or choices[0])
    if value not in choices:
        raise ConfigError(f"data.{key}={value}: choose {' or '.join(choices)}")
    return value


def _source_name(path: Path, root: Path) -> str:
    if path == root:
        return root.name
    return path.relative_to(root).as_posix()


def _whole_episode(episode: Episode, camera: str, infos: dict[str, VideoInfo | str]) -> CameraRead:
    """Where each frame of ``episode``'s ``camera`` is in its file."""
    frames = episode.cameras[camera]
    if isinstance(frames, ArrayFrames):
        return CameraRead(camera, frames.path, tuple(range(episode.length)), key=frames.key)
    info = infos[frames.path]
    if isinstance(info, str):
        raise UnusableEpisode(f"its video {frames.path} {info}")
    times = info.frame_times()
    # LeRobot keeps timestamps as float32: a minute into a file they are ~2 us off
    wanted = frames.start + episode.timestamps
    found = nearest(times, wanted)
    period = 1 / info.fps if info.fps > 0 else float(np.median(np.diff(times)) or 1)
    tolerance = FRAME_TOLERANCE * period
    off = np.abs(times[found] - wanted) > tolerance
    if off.any():
        first = int(np.flatnonzero(off)[0])
        raise UnusableEpisode(
            f"its frame {first} at {wanted[first]:.3f} s is not in {frames.path}, whose"
            f" {info.frames} frames end at {times[-1]:.3f} s"
        )
    if frames.end is not None and wanted[-1] > frames.end + tolerance:
        raise UnusableEpisode(
            f"its last frame at {wanted[-1]:.3f} s of {frames.path} lies past its to_timestamp"
            f" {frames.end:.3f} s: in the next episode's frames"
        )
    return CameraRead(camera, frames.path, tuple(int(i) for i in found), info=info)


def nearest(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted time, the index of the frame whose time is nearest (``times``
    ascending)."""
    after = np.clip(np.searchsorted(times, wanted), 1, len(times) - 1)
    before = after - 1
    closer_before = np.abs(times[before] - wanted) <= np.abs(times[after] - wanted)
    return np.where(closer_before, before, after) if len(times) > 1 else np.zeros_like(after)
