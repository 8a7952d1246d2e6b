"""``fmcore check``: the contract checks a plugin must pass, run on the installed plugin.

A plugin is named by its distribution (``fmcore-ecg``), its entry point or a domain or method it
provides. Every config file it ships must set its group's required keys; each domain must write
its embedded sample, index and load it in its modality's layout, say how federated sites may
split it, train two steps and, with a labelled ``val`` split, score under kNN; each method must
give every trainable parameter a gradient (DDP), scope every state-dict entry for federation,
train two steps on digits and score under kNN. Each check gives one :class:`CheckResult`.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from fmcore.config import (
    REQUIRED_KEYS,
    ConfigSources,
    compose,
    config_sources,
    core_config_dir,
    load_option,
    missing_required_keys,
)
from fmcore.distribution import DISTRIBUTION
from fmcore.domain import Domain, Sample
from fmcore.engine.data import DomainDataset, collate
from fmcore.engine.trainer import train
from fmcore.errors import ConfigError, FmcoreError
from fmcore.eval.run import evaluate
from fmcore.factory import Parts, build_domain, build_parts
from fmcore.method import Scope, StepContext
from fmcore.plugin_manager import PluginInfo, Registry
from fmcore.transport import transport_problem

PASS, FAIL, SKIP = "pass", "FAIL", "skip"
# The partners a plugin's method, or domain, is checked with.
CHECK_DOMAIN, CHECK_METHOD = "digits", "simclr"
TINY_RUN = (
    "encoder.depth=2",
    "encoder.embed_dim=64",
    "encoder.vit.num_heads=2",
    "trainer.batch_size=8",
    "trainer.num_workers=0",
    "trainer.device=cpu",
    "trainer.warmup_steps=1",
    "trainer.max_steps=2",
    "trainer.progress=none",
)
SIMCLR_SMALL = ("method.hidden_dim=64", "method.projection_dim=32")
KNN_WORDS = ("eval=knn", "eval.bootstrap=0", "eval.k=5")


@dataclass
class CheckResult:
    name: str
    status: str  # PASS, FAIL or SKIP
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.status:4}  {self.name}" + (f": {self.detail}" if self.detail else "")


@dataclass
class Target:
    """What ``fmcore check`` was asked about: the matching plugins and what they provide."""

    plugins: list[PluginInfo]
    problems: list[str]
    domains: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    config_dirs: list[Path] = field(default_factory=list)


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def find_target(registry: Registry, name: str) -> Target:
    """The plugins ``name`` designates: by distribution or entry point (all they provide), or
    by a provided domain or method (that one only); a :class:`ConfigError` listing the
    installed plugins when none matches."""
    wanted = _normalised(name)

    def matches(plugin: str, distribution: str, provided: Sequence[str] = ()) -> bool:
        return wanted in {_normalised(plugin), _normalised(distribution)} or name in provided

    plugins = [
        info
        for info in registry.plugins
        if matches(
            info.name,
            info.distribution,
            [*info.provides.get("domains", []), *info.provides.get("methods", [])],
        )
    ]
    problems = [str(p) for p in registry.problems if matches(p.plugin, p.distribution)]
    if not plugins and not problems:
        installed = sorted({f"{p.name} ({p.distribution})" for p in registry.plugins})
        raise ConfigError(
            f"no installed plugin, distribution, domain or method is named '{name}';"
            f" installed plugins: {', '.join(installed)}"
        )
    target = Target(plugins, problems)
    for info in plugins:
        target.domains += info.provides.get("domains", [])
        target.methods += info.provides.get("methods", [])
        target.config_dirs += [Path(d) for d in info.provides.get("config_dirs", [])]
        if info.distribution == DISTRIBUTION and core_config_dir() not in target.config_dirs:
            target.config_dirs.append(core_config_dir())  # the built-ins' files are fmcore's
    if not any(matches(info.name, info.distribution) for info in plugins):
        # named by a domain or method it provides: check that one, not its siblings
        target.domains = [domain for domain in target.domains if domain == name]
        target.methods = [method for method in target.methods if method == name]
    return target


def run_checks(registry: Registry, name: str, work: Path | None = None) -> Iterator[CheckResult]:
    """Every check of the plugin ``name``, as each finishes; runs write under ``work`` (a
    temporary directory by default)."""
    target = find_target(registry, name)
    for problem in target.problems:
        yield CheckResult("load", FAIL, problem)
    if target.plugins:
        loaded = ", ".join(f"{p.name} ({p.distribution} {p.version})" for p in target.plugins)
        yield CheckResult("load", PASS, loaded)
    sources = config_sources(registry)
    yield from _config_checks(target, sources)
    with tempfile.TemporaryDirectory(prefix="fmcore-check-") as scratch:
        root = work or Path(scratch)
        for domain in target.domains:
            yield from DomainChecks(registry, domain, root / f"domain-{domain}").run()
        for method in target.methods:
            yield from MethodChecks(registry, method, root / f"method-{method}").run()


def _config_checks(target: Target, sources: ConfigSources) -> Iterator[CheckResult]:
    """Each provided domain and method has its file in the plugin's config directories, and
    every option file the plugin ships sets its group's required keys."""
    files: dict[Path, str] = {}
    for group, names in (("domain", target.domains), ("method", target.methods)):
        for name in names:
            file = sources.options(group).get(name)
            if file is None or file.parent.parent not in target.config_dirs:
                reason = _no_file_reason(group, name, file, target.config_dirs)
                yield CheckResult(f"config {group}/{name}.yaml", FAIL, reason)
            else:
                files[file] = group
    for directory in target.config_dirs:
        if directory == core_config_dir():
            continue  # fmcore's own: only the files of the built-ins checked (above)
        for group in REQUIRED_KEYS:
            files.update(dict.fromkeys(sorted((directory / group).glob("*.yaml")), group))
    for file, group in files.items():
        yield _required_keys(file, group, sources)


def _required_keys(file: Path, group: str, sources: ConfigSources) -> CheckResult:
    name = f"config {group}/{file.name}"
    if sources.options(group).get(file.stem) != file:
        winner = sources.options(group)[file.stem]
        return CheckResult(name, FAIL, f"{file} is hidden by {winner}: choose another name")
    try:
        missing = missing_required_keys(group, load_option(sources, group, file.stem))
    except (FmcoreError, OSError, ValueError) as error:
        return CheckResult(name, FAIL, f"{file}: {error}")
    if missing:
        return CheckResult(name, FAIL, f"{file} does not set the required key {missing[0]}")
    return CheckResult(name, PASS, f"{file} sets {', '.join(REQUIRED_KEYS[group])}")


def _no_file_reason(kind: str, name: str, found: Path | None, dirs: Sequence[Path]) -> str:
    if found is not None:
        return f"{kind}={name} reads {found}, not a file of this plugin's config directories"
    shown = ", ".join(str(d) for d in dirs) or "none: implement fmcore_config_dirs"
    return f"no {kind}/{name}.yaml in the plugin's config directories ({shown})"


Check = Callable[[], str]


class _Checks:
    """Checks run in order; one that fails or is skipped skips those that need it."""

    prefix: str

    def __init__(self, registry: Registry, name: str, work: Path) -> None:
        self.registry = registry
        self.name = name
        self.work = work
        self.failed: str | None = None

    def _run(self, label: str, check: Check, needed: bool = True) -> CheckResult:
        name = f"{self.prefix} {self.name}: {label}"
        if self.failed is not None:
            return CheckResult(name, SKIP, f"needs {self.failed}")
        try:
            return CheckResult(name, PASS, check())
        except _Skipped as skipped:
            return CheckResult(name, SKIP, str(skipped))
        except Exception as error:  # a plugin's bug of any kind is a failed check, not a crash
            if needed:
                self.failed = label
            detail = str(error) if isinstance(error, FmcoreError) else _described(error)
            return CheckResult(name, FAIL, detail)

    def _compose(self, *words: str) -> DictConfig:
        cache = f"run.cache_dir={self.work / 'cache'}"
        return compose([*words, *TINY_RUN, cache], config_sources(self.registry))

    def _train(self, config: DictConfig) -> str:
        config.run.dir = str(self.work / "run")
        result = train(config, self.registry)
        if result.steps != 2:
            raise ConfigError(f"stopped after {result.steps} of 2 steps")
        return f"2 steps into {result.run_dir}"

    def _knn(self, words: Sequence[str]) -> str:
        run = self.work / "run"
        words = [*words, *KNN_WORDS, f"checkpoint={run}"]
        config = self._compose(*words)
        config.run.dir = str(self.work / "eval")
        result = evaluate(config, self.registry, words)  # data.* words apply over the run's
        accuracy = result["metrics"]["accuracy"]
        accuracy = accuracy["value"] if isinstance(accuracy, dict) else accuracy
        return f"kNN accuracy {float(accuracy):.3f} on {result['splits']}"


class _Skipped(Exception):
    """A check that does not apply to this plugin (no labelled split to score, ...)."""


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class DomainChecks(_Checks):
    prefix = "domain"
    config: DictConfig | None = None  # set by the compose check
    domain: Domain | None = None  # set by the sample data check

    def run(self) -> Iterator[CheckResult]:
        yield self._run("compose", self._compose_domain)
        yield self._run("sample data", self._sample_data)
        yield self._run("index and load", self._index_and_load)
        yield self._run("partition keys (federated)", self._partition_keys, needed=False)
        yield self._run("train 2 steps", self._train_domain)
        yield self._run("eval", self._eval_domain)

    def _words(self) -> list[str]:
        return [f"domain={self.name}", f"method={CHECK_METHOD}", *SIMCLR_SMALL]

    def _compose_domain(self) -> str:
        self.config = self._compose(*self._words())
        return f"modality {self.registry.domain(self.name).modality_for(self.config.data)}"

    def _sample_data(self) -> str:
        assert self.config is not None
        if self.config.data.get("root"):
            raise _Skipped(f"data.root={self.config.data.root} is set in the domain's config")
        self.domain = build_domain(self.config, self.registry)
        if type(self.domain).write_sample_data is Domain.write_sample_data:
            raise _Skipped("no write_sample_data: the domain reads its data elsewhere")
        root = self.domain.resolve_root()
        files = [p for p in root.rglob("*") if p.is_file()]
        if not files:
            raise ConfigError(f"write_sample_data wrote no file into {root}")
        return f"{len(files)} files in {root}"

    def _index_and_load(self) -> str:
        assert self.config is not None
        domain = self.domain or build_domain(self.config, self.registry)
        self.domain = domain
        counts = []
        for split in domain.splits:
            try:
                refs = domain.index(split)
            except ConfigError as error:  # a split this data cannot provide (val without labels)
                if split == "train":
                    raise
                counts.append(f"{split} unavailable ({error})")
                continue
            if not refs:
                raise ConfigError(f"index('{split}') found no samples in the embedded sample")
            counts.append(f"{split} {len(refs)}")
        sample = domain.load(domain.index("train")[0])
        _check_sample(sample, domain)
        return f"{', '.join(counts)}; a sample {tuple(sample.data.shape)}"

    def _partition_keys(self) -> str:
        domain = self.domain
        assert domain is not None
        if not domain.partition_keys:
            raise _Skipped("partition_keys is empty: federated sites split it iid only")
        refs = domain.index("train")
        groups = []
        for by in domain.partition_keys:
            try:
                keys = {domain.partition_key(ref, by) for ref in refs}  # hashable, or TypeError
            except ConfigError as error:  # a grouping this data cannot provide (no patients)
                groups.append(f"{by} unavailable ({error})")
                continue
            groups.append(f"{by}: {len(keys)} groups")
        return ", ".join(groups)

    def _train_domain(self) -> str:
        return self._train(self._compose(*self._words()))

    def _eval_domain(self) -> str:
        domain, words = self.domain, self._words()
        assert domain is not None
        if "val" not in domain.splits:
            raise _Skipped(f"no 'val' split in splits {domain.splits}: kNN scores train vs val")
        if "labelled" in domain.sample_kinds and not domain.data.get("root"):
            words.append("data.sample=labelled")  # the embedded sample that has labels
            domain = build_domain(self._compose(*words), self.registry)
        try:
            val = domain.index("val")
        except ConfigError as error:
            raise _Skipped(f"the embedded sample has no val split: {error}") from error
        if all(domain.load(val[i]).label < 0 for i in range(min(8, len(val)))):
            raise _Skipped("the embedded sample's val split is unlabelled")
        return self._knn(words)


def _check_sample(sample: Sample, domain: Domain) -> None:
    if not isinstance(sample, Sample):
        raise ConfigError(f"load returned a {type(sample).__name__}, not an fmcore Sample")
    data = sample.data
    size, channels = domain.sample_size, domain.channels
    expected = (*size, channels) if domain.modality == "points" else (channels, *size)
    if tuple(data.shape) != expected:
        raise ConfigError(
            f"load gave a sample of shape {tuple(data.shape)}; data.size={list(size)} and"
            f" data.channels={channels} make {expected} for modality {domain.modality}"
        )
    problem = transport_problem(data, domain.float_samples, domain.value_range)
    if problem is not None:
        raise ConfigError(problem)
    if not domain.float_samples:
        return  # integers: finite, and the device clamps them into [0, 1]
    if not torch.isfinite(data).all():
        raise ConfigError(f"load gave {data.dtype} data that is not all finite")
    if domain.modality != "points" and (data.min() < 0 or data.max() > 1):
        low, high = float(data.min()), float(data.max())
        raise ConfigError(f"load gave values in [{low:.3g}, {high:.3g}], not in [0, 1]")


class MethodChecks(_Checks):
    prefix = "method"
    parts: Parts  # set by the compose check, which every other check needs

    def run(self) -> Iterator[CheckResult]:
        yield self._run("compose", self._compose_method)
        yield self._run("every trainable parameter gets a gradient (DDP)", self._gradients)
        yield self._run("federated scopes", self._scopes, needed=False)
        yield self._run("train 2 steps", self._train_method)
        yield self._run("eval", self._eval_method)

    def _words(self) -> list[str]:
        return [f"domain={CHECK_DOMAIN}", f"method={self.name}"]

    def _compose_method(self) -> str:
        self.parts = build_parts(self._compose(*self._words()), self.registry)
        parameters = sum(p.numel() for p in self.parts.method.parameters())
        return f"{parameters:,} parameters with domain={CHECK_DOMAIN}"

    def _gradients(self) -> str:
        parts = self.parts
        method = parts.method.train()
        samples = DomainDataset(parts.domain, parts.domain.index("train"))
        batch, _ = collate([samples[i] for i in range(min(8, len(samples)))])
        assert batch is not None
        generator = torch.Generator().manual_seed(0)
        ctx = StepContext(0, 2, 1e-4, 0.0, 0.99, parts.views, generator)
        loss = method(batch, ctx).loss
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(f"the loss of a step is {value}")
        loss.backward()
        unused = [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None]
        if unused:
            raise ConfigError(
                f"{len(unused)} trainable parameter(s) got no gradient, which stalls DDP:"
                f" {', '.join(unused[:5])} (freeze what the objective does not use, e.g."
                " encoder.mask_token.requires_grad_(False) in a method that never masks)"
            )
        return f"loss {value:.4f}"

    def _scopes(self) -> str:
        state = self.parts.method.state_dict()
        scopes = self.parts.method.scopes()
        unknown = sorted(set(scopes) - set(state))
        unscoped = sorted(set(state) - set(scopes))
        wrong = sorted(k for k, v in scopes.items() if not isinstance(v, Scope))
        trunk_not_shared = sorted(
            k for k, v in scopes.items() if k.startswith("encoder.trunk.") and v != Scope.SHARED
        )
        problems = [
            f"{label}: {', '.join(keys[:5])}"
            for label, keys in (
                ("scopes() names keys the state dict lacks", unknown),
                ("state-dict keys without a scope", unscoped),
                ("values that are not a fmcore Scope", wrong),
                ("encoder.trunk keys not shared (the trunk is what sites share)", trunk_not_shared),
            )
            if keys
        ]
        if problems:
            raise ConfigError("; ".join(problems))
        counts = {scope.value: sum(v == scope for v in scopes.values()) for scope in Scope}
        return ", ".join(f"{count} {scope}" for scope, count in counts.items())

    def _train_method(self) -> str:
        return self._train(self._compose(*self._words()))

    def _eval_method(self) -> str:
        return self._knn(self._words())
