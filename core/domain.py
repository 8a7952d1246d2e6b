"""The domain contract: a domain knows files, nothing else.

A domain finds samples under ``data.root`` (or writes its embedded sample data when no root is
given), decodes one sample into a fixed-size raw tensor of its modality's layout, and says what
is bad input by raising :class:`BadSample`. Views, tokens, losses and training are not its job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import inspect
import os
import shutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from omegaconf import DictConfig
from torch import Tensor

from fmcore.distribution import extra_install_command
from fmcore.errors import BadSample, ConfigError, MissingExtra, MissingPath
from fmcore.io import atomic_write_text
from fmcore.labels import SAMPLE_LABELS, LabelTable, load_labels
from fmcore.modalities.base import ViewStep
from fmcore.transport import unit_float


@dataclass
class Sample:
    """One decoded sample: data in the modality's layout, an integer label or -1, metadata
    (only str / int / float values, so they batch and serialise), and where the data has a
    region without content (a fundus camera's black surround), ``valid``: (1, *S) of 0 and 1
    (handed over as uint8), 1 where a pixel holds data; masked-modelling methods leave the rest
    out of their loss."""

    data: Tensor
    label: int = -1
    meta: dict[str, Any] = field(default_factory=dict)
    valid: Tensor | None = None


# (observations, states) -> actions: one (B, *sample shape) tensor per sample of a time step (a
# camera each, or one of stacked cameras) as ``load`` gives them (uint8), and (B, S) states.
Act = Callable[[list[Tensor], Tensor], Tensor]


class ClosedLoop(Protocol):
    """The simulator a domain's demonstrations were recorded in, for the behaviour-cloning
    probe (``eval=bc``) to roll its policy out in."""

    action_dim: int  # the first action_dim entries of a policy's output act

    def rollouts(self, act: Act, episodes: int, seed: int) -> list[bool]:
        """Run ``episodes`` new episodes (seeded by ``seed``, none of the recorded ones), each
        step acting as ``act`` says for the whole batch; whether each one succeeded."""
        ...


class Domain(ABC):
    """Base class of every domain plugin.

    Subclasses set ``name`` (selected by ``domain=<name>``), ``splits`` (what ``index`` accepts),
    ``modality`` (``image2d``,
    ``volume3d``, ``video``, ``points`` or a plugin's; a class attribute, or :meth:`modality_for`
    when the layout depends on the config), and, when they need optional packages, ``requires``
    (their import names) with ``extra`` (the fmcore extra that installs them) or, for a
    third-party plugin, ``install`` (the exact command), so a missing package fails with
    the command to run instead of an ImportError. Import those packages inside methods, never at
    module top: a plugin whose module cannot import is reported as broken as a whole.

    A domain object is pickled into data-loader workers: open file handles lazily, per process.
    """

    name: ClassVar[str]
    modality: str
    extra: ClassVar[str | None] = None
    install: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    partition_keys: ClassVar[tuple[str, ...]] = ()  # see partition_key
    splits: ClassVar[tuple[str, ...]] = ("train", "all")  # what index() accepts
    sample_kinds: ClassVar[tuple[str, ...]] = ("plain",)  # data.sample values: see sample_kind
    # The transport rule (fmcore.transport); an instance may set its own. value_range: the
    # stored values that mean 0 and 1, where not 0 and the integer type's full scale (255).
    value_range: tuple[float, float] | None = None
    float_samples: bool = False  # True: load returns floats, their nature (point coordinates)

    def __init__(self, data: DictConfig, cache_dir: Path) -> None:
        self.data = data
        self.cache_dir = cache_dir
        self.bad_inputs: list[str] = []  # files index() skipped, each "path: reason"
        self.modality = self.modality_for(data)
        self.sample_kind  # noqa: B018 -- a wrong data.sample fails here, root or not

    @classmethod
    def modality_for(cls, data: DictConfig) -> str:
        """The modality of this domain's samples under ``data``, known before any file is read
        (the config is composed with it). The class's ``modality`` unless a subclass's layout
        depends on the config (radiology: ``data.mode``)."""
        return cls.modality

    @classmethod
    def recipe_keys(cls, data: DictConfig) -> tuple[str, ...]:
        """The keys a method's ``by_modality`` table may use for this domain, merged after its
        modality's: the domain's name, and a domain with modes adds ``<name>-<mode>``
        (ophthalmology: ``ophthalmology-oct``)."""
        return (cls.name,)

    def report_bad_input(self, path: str | Path, reason: str) -> None:
        """Record a whole input (a corrupt slide, an empty series) that ``index`` leaves out.

        The engine prints these and counts them in the run summary; the run goes on. An input is
        recorded once however often ``index`` meets it (another split, a plugin's picture hook).
        """
        message = f"{path}: {reason}"
        if message not in self.bad_inputs:
            self.bad_inputs.append(message)

    @classmethod
    def check_requirements(cls) -> None:
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            command = cls.install or (
                extra_install_command(cls.extra)
                if cls.extra
                else f"pip install {' '.join(missing)}"
            )
            raise MissingExtra(f"domain '{cls.name}'", missing, command)

    @property
    def sample_size(self) -> tuple[int, ...]:
        """Size of a decoded sample (``data.size``): (H, W), (D, H, W), (T, H, W) or (N,)."""
        return tuple(int(s) for s in self._required_data_key("size"))

    @property
    def channels(self) -> int:
        """Channels of a decoded sample (3 + features for points)."""
        return int(self._required_data_key("channels"))

    def _required_data_key(self, key: str) -> Any:
        value = self.data.get(key)
        if value is None:
            raise ConfigError(
                f"domain={self.name} needs data.{key}, which is unset: give it in the domain's"
                f" config file (domain/{self.name}.yaml)"
            )
        return value

    @property
    def sample_kind(self) -> str:
        """``data.sample``: which embedded sample an unset ``data.root`` means, checked against
        the domain's ``sample_kinds``."""
        kind = str(self.data.get("sample") or "plain")
        if kind not in self.sample_kinds:
            raise ConfigError(
                f"data.sample={kind}: domain={self.name} ships "
                + " and ".join(f"data.sample={k}" for k in self.sample_kinds)
            )
        return kind

    @property
    def sample_name(self) -> str:
        """The embedded sample's folder under ``cache_dir/sample-data``; a domain whose sample
        depends on its config names each variant."""
        kind = self.sample_kind
        return self.name if kind == "plain" else f"{self.name}-{kind}"

    def resolve_root(self) -> Path:
        """``data.root``, or the embedded sample data in the cache directory, written on first
        use and again whenever the writer's source changes (:func:`sample_writer_key`)."""
        if self.data.get("root"):
            root = Path(str(self.data.root)).expanduser()
            if not root.exists():
                raise MissingPath(
                    f"data.root={root} does not exist: point data.root at your {self.name} data,"
                    " or leave it unset to use the embedded sample"
                )
            return root
        directory = self.cache_dir / "sample-data" / self.sample_name
        stamp = directory.with_name(directory.name + WRITER_STAMP_SUFFIX)
        key = sample_writer_key(type(self))
        if directory.exists() and _read_stamp(stamp) == key:
            return directory
        # One writer at a time (simulated federated sites and concurrent runs share the cache):
        # checking, replacing and stamping under the lock, no process removes a folder another
        # has just written and is about to read.
        with _exclusive_lock(directory.with_name(directory.name + ".lock")):
            if not directory.exists() or _read_stamp(stamp) != key:
                self._write_sample(directory, stamp, key)
        return directory

    def _write_sample(self, directory: Path, stamp: Path, key: str) -> None:
        """Write the embedded sample beside ``directory`` and rename it into place (a crash never
        leaves half of it), replacing one an older writer made; the caller holds the lock."""
        partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        self.write_sample_data(partial)
        if directory.exists():
            stale = directory.with_name(f"{directory.name}.stale-{os.getpid()}")
            directory.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        partial.rename(directory)
        atomic_write_text(stamp, key)

    def label_table(self) -> LabelTable | None:
        """The labels and splits ``data.labels`` names (a CSV or a folder per class); unset, the
        ``labels.csv`` of the labelled embedded sample (``data.sample=labelled`` and no
        ``data.root``), else None. ``index`` looks its inputs up in it (see
        :mod:`fmcore.labels`)."""
        source = self.data.get("labels")
        if not source and not self.data.get("root") and self.sample_kind == "labelled":
            source = self.resolve_root() / SAMPLE_LABELS
        return load_labels(source) if source else None

    def index(self, split: str = "train") -> Sequence[Any]:
        """The samples of ``split`` as lightweight references (paths, coordinates).

        Called once per process before training; the references are pickled into workers. A
        split the domain does not know (``splits``) fails here, with one message for every
        domain; the rest is :meth:`find_samples`.
        """
        if split not in self.splits:
            raise ConfigError(
                f"unknown split '{split}' for domain={self.name}; valid: {', '.join(self.splits)}"
            )
        return self.find_samples(split)

    @abstractmethod
    def find_samples(self, split: str) -> Sequence[Any]:
        """Find the samples of ``split`` (one of ``splits``) and return their references.

        Unusable inputs are left out and reported with :meth:`report_bad_input`; a split the
        data at hand cannot provide (``val`` without labels) raises :class:`ConfigError`
        saying what would provide it.
        """

    def index_groups(self, split: str) -> tuple[Sequence[Any], dict[str, Sequence[int]]] | None:
        """Samples that belong together (a slide's tiles): the split's whole index and each
        group's positions in it, or None for a domain without groups. ``fmcore embed`` writes
        one feature file per group, the bags MIL reads; other domains get shards."""
        return None

    @abstractmethod
    def load(self, ref: Any) -> Sample:
        """Decode one referenced sample; raise :class:`BadSample` (naming the file) if unusable.

        Must be deterministic given ``ref`` (put any random choice, such as a tile position,
        into the references ``index`` returns), so resumed runs see the same data.

        The transport rule (:mod:`fmcore.transport`): images, volumes and video are the
        integers the file stores (uint8 for 8-bit pictures and video, uint16 for 16-bit), never
        floats; the device maps them to [0, 1] (by the type's full scale, or ``value_range``),
        where the view ops clamp and threshold. Only a domain with ``float_samples`` returns
        floats: points are (N, 3 + F) floats, and radiology's and OCT's preprocessed
        intensities are floats in [0, 1] until their windowing moves to the device.
        """

    def write_sample_data(self, directory: Path) -> None:
        """Write a small embedded sample in the domain's real file format into ``directory``:
        the ``sample_kind`` one; a ``labelled`` sample also writes ``labels.csv`` there
        (``data.labels``' CSV layout), which ``label_table`` then reads."""
        raise NotImplementedError(
            f"domain '{self.name}' has no embedded sample data: set data.root to your data"
        )

    def partition_key(self, ref: Any, by: str) -> Hashable:
        """The group of ``ref`` when federated sites split one dataset ``by`` it (``label``,
        ``slide``, ``patient``...): a group's samples all go to one site. Domains list the
        groupings they support in ``partition_keys``."""
        raise NotImplementedError(f"domain '{self.name}' cannot group samples by '{by}'")

    def closed_loop(self) -> ClosedLoop | None:
        """The simulator of the task the samples show, where there is one (a robotics sample
        recorded in simulation); None for recorded data."""
        return None

    def view_steps(self) -> list[ViewStep]:
        """Domain-specific batched view steps applied after the modality's (e.g. stain jitter)."""
        return []

    def to_unit(self, data: Tensor) -> Tensor:
        """A batch as workers hand it over -> float32 in [0, 1], on ``data``'s device."""
        return unit_float(data, self.value_range)

    def encoder_input(self, data: Tensor) -> Tensor:
        """A raw batch as the encoder sees it without augmentation (evaluation, embedding):
        :meth:`to_unit`, then :meth:`normalize`."""
        return self.normalize(self.to_unit(data))

    def normalize(self, views: Tensor) -> Tensor:
        """Map augmented views to the encoder's input range: by default ``data.mean``, ``.std``."""
        mean = self.data.get("mean")
        std = self.data.get("std")
        if mean is None or std is None:
            return views
        shape = (1, -1) + (1,) * (views.dim() - 2)
        mean_t = views.new_tensor(list(mean)).view(shape)
        std_t = views.new_tensor(list(std)).view(shape)
        return (views - mean_t) / std_t


WRITER_STAMP_SUFFIX = ".writer"  # beside a sample's folder: the sample_writer_key that wrote it


def sample_writer_key(domain_class: type[Domain]) -> str:
    """What an embedded sample was written by: a hash of the source files of the package that
    defines ``domain_class.write_sample_data`` (its module and the helpers beside it), so a
    changed writer rewrites the cached sample, also in an editable install whose version stays."""
    module = sys.modules[domain_class.write_sample_data.__module__]
    folder = Path(inspect.getfile(module)).parent
    digest = hashlib.sha256()
    for source in sorted(folder.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An advisory lock on ``path`` (created if need be), held for the ``with`` block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_stamp(stamp: Path) -> str | None:
    return stamp.read_text().strip() if stamp.is_file() else None


__all__ = ["Act", "BadSample", "ClosedLoop", "Domain", "Sample"]
