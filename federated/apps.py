"""The Flower ServerApp and ClientApp of fmcore.

``fmcore federate`` builds both in-process for Flower's simulation runtime. For a deployment,
``flwr run`` loads the module-level ``serverapp`` and ``clientapp``: the federation's config words
come from the run config key ``overrides`` and each SuperNode names its site, data and state in
its node config (``site-name``, ``data-root``, optionally ``domain`` and ``state-dir``).
"""

from __future__ import annotations

import functools
import logging
import re
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig
from torch import Tensor

from fmcore.errors import ConfigError
from fmcore.factory import cache_dir
from fmcore.federated.app_signing import check_run_config
from fmcore.federated.audit import append_audit
from fmcore.federated.federation_config import (
    ComposedConfigs,
    compose_federation,
    federated_section,
    federation_words,
)
from fmcore.federated.secure_client import secure_aggregation_mod
from fmcore.federated.secure_server import (
    SecureFederation,
    check_secure_config,
    secure_aggregation_on,
)
from fmcore.federated.server import Federation
from fmcore.federated.site import (
    Site,
    evaluate_global,
    initial_groups,
    site_config,
    train_round,
)
from fmcore.federated.sites import FRESH_KEY
from fmcore.federated.wire import (
    CONFIG_RECORD,
    GLOBAL_DTYPE_KEY,
    METRICS_RECORD,
    SITE_RECORD,
    to_record,
    to_state,
)
from fmcore.plugin_manager import registry

log = logging.getLogger("fmcore.federated")


def _run_words(context: Context) -> list[str]:
    check_run_config(context.run_config)  # behind the app gate: the signed words only
    return federation_words(shlex.split(str(context.run_config.get("overrides", ""))))


def simulated_site(
    words: Sequence[str], index: int, site_root: Path, compose: ComposedConfigs
) -> Site:
    """Site ``index`` of a simulation: its domain, data root and extra words from the federated
    lists (null entries keep the defaults); sites with the same domain and data split that data."""
    settings = federated_section(compose(words))  # the lists' lengths are checked there
    count = settings.sites
    domains = settings.site_domains or [None] * count
    roots = settings.site_data or [None] * count
    overrides = [f"domain={domains[index]}"] if domains[index] is not None else []
    if roots[index] is not None:
        overrides.append(f"data.root={roots[index]}")
    own = settings.site_overrides or [[]] * count
    overrides += [str(word) for word in own[index] or []]
    peers = [i for i in range(count) if (domains[i], roots[i]) == (domains[index], roots[index])]
    partition = (peers.index(index), len(peers)) if len(peers) > 1 else None
    name = settings.site_names[index] if settings.site_names else f"site-{index}"
    return Site(name, tuple(overrides), site_root / name, partition)


#: Node-config keys a site reads beside ``site-name``/``domain``/``state-dir``, and the config
#: key each sets at that site (``fmcore node`` writes them from its NODE.toml).
SITE_OVERRIDES = {
    "data-root": "data.root",
    "device": "trainer.device",
    "batch-size": "trainer.batch_size",
    "num-workers": "trainer.num_workers",
}
FEDERATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def deployed_site(context: Context, federation: str, config: DictConfig) -> Site:
    """The site a SuperNode's node config describes."""
    node = context.node_config
    if "site-name" not in node:
        raise ConfigError(
            "this SuperNode has no site name: start it with"
            ' --node-config \'site-name="hospital-a" data-root="/data/slides"\''
        )
    name = str(node["site-name"])
    overrides = [f"domain={node['domain']}"] if "domain" in node else []
    overrides += [f"{key}={node[name]}" for name, key in SITE_OVERRIDES.items() if name in node]
    # Keyed by the federation, also under a configured state-dir: a new federation never
    # resumes (nor prunes) an older one's checkpoints, and a restarted one finds its own.
    if not FEDERATION_NAME.match(federation):  # it names a folder the site writes and prunes
        raise ConfigError(f"the server sent an unusable federation name {federation!r}")
    state = node.get("state-dir")
    root = Path(str(state)) if state else cache_dir(config) / "federated"
    if (root / "checkpoints").is_dir():
        log.warning(
            "state-dir %s holds an engine run of the layout before one folder per federation;"
            " this federation keeps its state in %s and does not resume that run",
            root,
            root / federation / name,
        )
    return Site(name, tuple(overrides), root / federation / name)


def site_errors_stay_local(handler: Callable[[Message, Context], Message]):
    """A failing site answers with the exception's class only: messages name files, data roots
    and patients, so the details go to the site's own log (its stderr), not to the server."""

    @functools.wraps(handler)
    def guarded(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception as error:
            detail = "".join(traceback.format_exception(error))
            print(f"fmcore site error:\n{detail}", file=sys.stderr, flush=True)
            reason = f"{type(error).__name__} at the site; the details stay in its log"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)

    return guarded


def global_weights(message: Message) -> dict[str, Tensor]:
    """The weights of every group a server message carries, as one float32 state dict."""
    dtype = str(message.content[CONFIG_RECORD].get(GLOBAL_DTYPE_KEY, "fp32"))
    received: dict[str, Tensor] = {}
    for record in message.content.array_records.values():
        received.update(to_state(record, dtype))
    return received


def make_client_app(
    words: Sequence[str] | None = None,
    site_root: Path | None = None,
    mods: Sequence[Mod] = (),
) -> ClientApp:
    """A ClientApp; ``words`` and ``site_root`` are given in simulation, else read from context.
    ``mods`` are Flower client mods (e.g. ``flwr.clientapp.mod`` DP clipping) around every call."""
    app = ClientApp(mods=[*mods, secure_aggregation_mod])  # SecAgg+ messages only
    compose = ComposedConfigs(registry)  # each site's config, composed once per process

    def identify(message: Message, context: Context) -> tuple[list[str], Site]:
        run_words = list(words) if words is not None else _run_words(context)
        if site_root is not None:
            return run_words, simulated_site(
                run_words, int(context.node_config["partition-id"]), site_root, compose
            )
        federation = str(message.content[CONFIG_RECORD]["federation"])
        return run_words, deployed_site(context, federation, compose(run_words))

    @app.query()
    @site_errors_stay_local
    def describe(message: Message, context: Context) -> Message:
        run_words, site = identify(message, context)
        config = site_config(run_words, site, compose)
        fresh = bool(message.content[CONFIG_RECORD].get(FRESH_KEY, True))
        groups = initial_groups(config, registry(), fresh)
        content = RecordDict({group: to_record(state) for group, state in groups.items()})
        content[SITE_RECORD] = ConfigRecord({"name": site.name})
        if config.federated.audit:
            append_audit(site.state_dir, "query", content)
        return Message(content, reply_to=message)

    def request(message: Message, context: Context):  # -> (config, site, plugins, weights)
        run_words, site = identify(message, context)
        config = site_config(run_words, site, compose)
        return config, site, registry(), global_weights(message)

    @app.train()
    @site_errors_stay_local
    def train(message: Message, context: Context) -> Message:
        config, site, plugins, received = request(message, context)
        settings = message.content[CONFIG_RECORD]
        result = train_round(
            config,
            site,
            plugins,
            received,
            int(settings["server-round"]),
            float(settings.get("proximal-mu", 0.0)),
        )
        dtype = str(config.federated.update_dtype)
        content = RecordDict(
            {group: to_record(state, dtype) for group, state in result.groups.items()}
        )
        content[METRICS_RECORD] = MetricRecord(
            {
                "num-examples": result.examples,
                "loss": result.loss,
                "train-seconds": result.seconds,
                "local-steps": result.steps,
            }
        )
        content[SITE_RECORD] = ConfigRecord({"name": site.name, "update-dtype": dtype})
        if config.federated.audit:
            append_audit(site.state_dir, "train", content)
        return Message(content, reply_to=message)

    @app.evaluate()
    @site_errors_stay_local
    def evaluate(message: Message, context: Context) -> Message:
        config, site, plugins, received = request(message, context)
        metrics, samples = evaluate_global(config, plugins, received)
        content = RecordDict({METRICS_RECORD: MetricRecord({**metrics, "num-examples": samples})})
        content[SITE_RECORD] = ConfigRecord({"name": site.name})
        if config.federated.audit:
            append_audit(site.state_dir, "evaluate", content)
        return Message(content, reply_to=message)

    return app


def make_server_app(
    config: DictConfig | None = None,
    run_dir: Path | None = None,
    failure: list[BaseException] | None = None,
) -> ServerApp:
    """A ServerApp; ``config`` and ``run_dir`` are given in simulation, else read from context.
    With ``failure``, an exception is kept there for the caller instead of only being logged."""
    if config is not None and secure_aggregation_on(config):
        check_secure_config(config)  # refuse before the simulation starts
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        plugins = registry()
        resolved = config or compose_federation(_run_words(context), plugins)
        directory = run_dir or Path(str(resolved.run.dir or "runs/federation"))
        try:
            if secure_aggregation_on(resolved):
                SecureFederation(grid, context, resolved, directory, plugins).run()
            else:
                Federation(grid, resolved, directory, plugins).run()
        except Exception as error:
            if failure is None:
                raise
            failure.append(error)

    return app


clientapp = make_client_app()
serverapp = make_server_app()
