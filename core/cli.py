"""The ``fmcore`` command: train, plugins, config (federate, eval, embed and export plug in beside
them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fmcore import __version__
from fmcore.config import compose, config_sources, resume_config, to_yaml
from fmcore.errors import ConfigError, FmcoreError
from fmcore.plugin_manager import Registry, registry
from fmcore.run_files import RUN_CONFIG_FILE

OVERRIDE_HELP = """\
overrides:
  group=option      choose a config group file:   domain=pathology  method=dinov2  encoder=vit_small
  key=value         change any existing key:      trainer.max_steps=10  data.root=/data/slides
  +key=value        add a key that is not there:  +data.slide_mpp=0.25
  values are YAML:  trainer.lr=1e-4  trainer.betas=[0.9,0.95]  run.dir=null

examples:
  fmcore train domain=pathology method=dinov2
  fmcore train domain=digits method=simclr trainer.max_steps=20 run.dir=runs/demo
  fmcore train run.dir=runs/demo resume=true          (continues with runs/demo/config.yaml)
  fmcore train --config runs/demo/config.yaml trainer.max_steps=200
  torchrun --nproc-per-node 8 -m fmcore train domain=pathology method=dinov2 data.root=/slides
"""


def _resolve(args: argparse.Namespace, plugins: Registry):  # -> DictConfig
    return compose(args.overrides, config_sources(plugins), saved=args.config)


def _add_override_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="override", help="see 'overrides' below")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="start from a saved config.yaml (a run directory's) instead of the defaults",
    )


def _warn_problems(plugins: Registry) -> None:
    for problem in plugins.problems:
        print(f"warning: {problem}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from fmcore.engine.trainer import train
    from fmcore.eval.periodic import periodic_evaluation

    plugins = registry()
    _warn_problems(plugins)
    config = _resolve(args, plugins)
    saved = (
        Path(str(config.run.dir)) / RUN_CONFIG_FILE if config.resume and config.run.dir else None
    )
    if saved is not None and saved.exists() and args.config is None:
        config = resume_config(args.overrides, config_sources(plugins), saved)
    result = train(config, plugins, evaluation=periodic_evaluation)
    print(f"finished {result.steps} steps; run directory {result.run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fmcore.eval.run import evaluate, format_table, require_protocol

    if args.config is None:
        require_protocol(args.overrides)
    plugins = registry()
    _warn_problems(plugins)
    result = evaluate(_resolve(args, plugins), plugins, args.overrides)
    print(format_table(result))
    print(f"wrote {result['path']}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from fmcore.eval.embed import embed, with_embed_defaults

    plugins = registry()
    _warn_problems(plugins)
    if args.config is None:
        args.overrides = with_embed_defaults(args.overrides)
    summary = embed(_resolve(args, plugins), plugins, args.overrides)
    print(
        f"embedded {summary['samples']:,} samples into {summary['files']} files"
        f" ({summary['skipped_count']} bad samples skipped); see {summary['out']}/embed.json"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fmcore.export import export_encoder

    plugins = registry()
    _warn_problems(plugins)
    exported = export_encoder(args.source, args.out, plugins, args.format, args.domain)
    print(exported.describe())
    return 0


def cmd_federate(args: argparse.Namespace) -> int:
    from fmcore.federated.federation_config import federation_to_run
    from fmcore.federated.simulation import simulate

    if args.config is not None:
        # Every site composes its own config from the command's words (its domain, data).
        raise ConfigError(
            "fmcore federate takes its config from the command line, not --config: continue a"
            " federation with fmcore federate run.dir=<its directory> resume=true"
        )
    plugins = registry()
    _warn_problems(plugins)
    config, words = federation_to_run(args.overrides, plugins)
    result = simulate(config, words)
    print(f"finished {result.rounds} rounds; global weights in {result.run_dir / 'rounds'}")
    return 0


def cmd_federate_app(args: argparse.Namespace) -> int:
    from fmcore.federated.deploy import write_app

    path = write_app(args.app_dir, args.overrides)
    print(f"wrote {path}; start it with: fmcore federate-run {args.app_dir} <superlink connection>")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from fmcore.federated.node import check_node, node_health, read_node_settings, run_supernode

    settings = read_node_settings(args.node_file)
    if args.health:
        status = node_health(settings)
        print(f"SuperNode {settings.site_name} at {settings.health_server_address}: {status}")
        return 0 if status == "SERVING" else 1
    plugins = registry()
    _warn_problems(plugins)
    samples = check_node(settings, plugins)
    print(
        f"node checks passed: site {settings.site_name}, domain {settings.domain},"
        f" {samples:,} training samples"
    )
    return 0 if args.check else run_supernode(settings)


def cmd_link(args: argparse.Namespace) -> int:
    from fmcore.federated.link import run_link

    flags = args.superlink_flags[1:] if args.superlink_flags[:1] == ["--"] else args.superlink_flags
    run_link(args.control_address, args.fleet_address, flags, args.trusted_app_keys)
    return 0


def cmd_federate_sign(args: argparse.Namespace) -> int:
    from fmcore.federated.app_signing import sign_app

    key_id = args.key_id or args.key.stem
    path = sign_app(args.app_dir, args.key, key_id)
    print(f"wrote {path}: signed by {key_id}; nodes that trust {key_id}'s key run this app")
    return 0


def cmd_federate_run(args: argparse.Namespace) -> int:
    from fmcore.federated.run_app import COMPLETED, run_federation_app

    run_id, status = run_federation_app(args.app_dir, args.connection)
    print(f"run {run_id}: {status}")
    return 0 if status == COMPLETED else 1


def cmd_config_show(args: argparse.Namespace) -> int:
    plugins = registry()
    _warn_problems(plugins)
    print(to_yaml(_resolve(args, plugins)), end="")
    return 0


def cmd_config_groups(args: argparse.Namespace) -> int:
    sources = config_sources(registry())
    for group in sources.groups():
        print(f"{group}: {', '.join(sources.options(group))}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins = registry()
    for info in plugins.plugins:
        print(f"{info.name}  ({info.distribution} {info.version}, {info.module})")
        for kind, names in sorted(info.provides.items()):
            print(f"    {kind}: {', '.join(names)}")
        if info.hooks:
            print(f"    hooks: {', '.join(info.hooks)}")
    for problem in plugins.problems:
        print(f"BROKEN {problem}")
    return 1 if args.strict and plugins.problems else 0


def cmd_new(args: argparse.Namespace) -> int:
    from fmcore.scaffold import check_name, write_skeleton

    plugins = registry()
    taken = plugins.domains if args.kind == "domain" else plugins.methods
    skeleton = check_name(args.kind, args.name, taken)
    root = write_skeleton(skeleton, args.dir)
    values = skeleton.values()
    print(f"wrote {root}; next:")
    print(f"  pip install -e {root}")
    print(f"  fmcore check {args.name}")
    print(f"  {values['train_command']}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fmcore.plugin_check import FAIL, run_checks

    failed = 0
    for result in run_checks(registry(), args.plugin):
        print(result, flush=True)
        failed += result.status == FAIL
    print(f"{failed} check(s) failed" if failed else f"all checks of {args.plugin} passed")
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from fmcore.report import INDEX_FILE, write_report

    report = write_report(args.run_dir)
    print(f"wrote {len(report.figures)} figures and {report.directory / INDEX_FILE}")
    return 0


def _add_export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument(
        "source",
        metavar="SOURCE",
        help="a run directory, an encoder.safetensors, a training checkpoint (checkpoints/step_N"
        " or its model.safetensors), or a federated round file or run directory (newest round)",
    )
    export.add_argument("--out", type=Path, required=True, metavar="FILE", help="the file written")
    export.add_argument(
        "--format",
        default="safetensors",
        help="safetensors: an fmcore encoder file (fmcore eval checkpoint=FILE reads it);"
        " timm: timm's VisionTransformer state dict (2D ViT encoders only)",
    )
    export.add_argument(
        "--domain",
        default=None,
        metavar="NAME",
        help="from a round of a federation whose sites hold several domains: whose tokenizer"
        " (default: the federation's first domain)",
    )


def _add_federated_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    add(
        "federate",
        "simulate a federation on this machine with Flower: fmcore federate federated.sites=4",
        cmd_federate,
    )
    federate_app = add(
        "federate-app",
        "write the Flower app directory flwr run deploys: fmcore federate-app DIR domain=...",
        cmd_federate_app,
        with_overrides=False,
    )
    federate_app.epilog = OVERRIDE_HELP
    federate_app.add_argument("app_dir", type=Path, metavar="DIR", help="the app directory")
    federate_app.add_argument(
        "overrides", nargs="*", metavar="override", help="see 'overrides' below"
    )
    federate_sign = add(
        "federate-sign",
        "sign an app with an Ed25519 key: nodes with trusted-app-keys run only signed apps",
        cmd_federate_sign,
        with_overrides=False,
    )
    federate_sign.add_argument("app_dir", type=Path, metavar="DIR", help="the app directory")
    federate_sign.add_argument(
        "--key", type=Path, required=True, help="the OpenSSH Ed25519 private key (ssh-keygen)"
    )
    federate_sign.add_argument("--key-id", help="its id in trusted keys (default: --key's stem)")
    federate_run = add(
        "federate-run",
        "flwr run an app, stream its log, exit 0 only if the federation completed",
        cmd_federate_run,
        with_overrides=False,
    )
    federate_run.add_argument("app_dir", type=Path, metavar="DIR", help="the app directory")
    federate_run.add_argument(
        "connection", nargs="?", default=None, help="the flwr SuperLink connection's name"
    )
    link = add(
        "link",
        "the coordinator's SuperLink: the hospitals' port serves the Fleet API only, and with"
        " --trusted-app-keys only signed apps run",
        cmd_link,
        with_overrides=False,
    )
    link.add_argument(
        "--fleet-address", default="0.0.0.0:9092", help="where hospitals' SuperNodes connect"
    )
    link.add_argument(
        "--control-address",
        default="127.0.0.1:9093",
        help="the Control API (flwr run, flwr supernode register) and the ServerApps' runtime",
    )
    trust = link.add_mutually_exclusive_group(required=True)
    trust.add_argument(
        "--trusted-app-keys", type=Path, help="YAML of the keys whose signed apps may run"
    )
    trust.add_argument(
        "--allow-unsigned-apps", action="store_true", help="a trial: run any app submitted"
    )
    link.add_argument(
        "superlink_flags",
        nargs=argparse.REMAINDER,
        help="after --: flower-superlink's own flags (TLS, --enable-supernode-auth, --database)",
    )
    node = add(
        "node",
        "a hospital's SuperNode from NODE.toml: checked before it joins, restarted with back-off",
        cmd_node,
        with_overrides=False,
    )
    node.add_argument("node_file", type=Path, metavar="NODE.toml", help="the node's settings")
    node.add_argument("--check", action="store_true", help="run the checks only, then exit")
    node.add_argument(
        "--health",
        action="store_true",
        help="ask the running SuperNode's health endpoint; exit 0 while it serves",
    )


def _add_plugin_author_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    new = add(
        "new",
        "write a pip-installable plugin package to start from: fmcore new domain|method NAME",
        cmd_new,
        with_overrides=False,
    )
    new.add_argument("kind", choices=("domain", "method"), help="what the plugin provides")
    new.add_argument("name", help="its name (domain=NAME / method=NAME); package fmcore_NAME")
    new.add_argument(
        "--dir", type=Path, default=Path(), help="where to write fmcore-NAME/ (default: here)"
    )
    add(
        "check",
        "run the plugin contract checks on an installed plugin: fmcore check fmcore-ecg | ecg",
        cmd_check,
        with_overrides=False,
    ).add_argument(
        "plugin", metavar="PACKAGE_OR_NAME", help="a distribution, entry point, domain or method"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmcore",
        description="Pretrain self-supervised foundation models, centrally or federated.",
        epilog=OVERRIDE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fmcore {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)

    def add(name: str, help_text: str, handler, with_overrides: bool = True):
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=OVERRIDE_HELP if with_overrides else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if with_overrides:
            _add_override_arguments(sub)
        sub.set_defaults(handler=handler)
        return sub

    add("train", "train a method on a domain (central; torchrun for several GPUs)", cmd_train)
    add(
        "eval",
        "frozen features: fmcore eval checkpoint=<run dir|encoder|checkpoint|round file>|random"
        " eval=knn|linear|fewshot|mil",
        cmd_eval,
    )
    add(
        "embed",
        "write frozen features per sample or slide: fmcore embed checkpoint=... embed.out=DIR",
        cmd_embed,
    )
    _add_export_arguments(
        add(
            "export",
            "write the encoder of a run dir, checkpoint or federated round as one file:"
            " fmcore export SOURCE --out FILE [--format safetensors|timm]",
            cmd_export,
            with_overrides=False,
        )
    )
    _add_federated_commands(add)
    add(
        "plugins",
        "list installed plugins, what each provides, and broken ones",
        cmd_plugins,
        with_overrides=False,
    ).add_argument("--strict", action="store_true", help="exit 1 when a plugin is broken")
    _add_plugin_author_commands(add)
    report = add(
        "report",
        "plot a training run's metrics: PNG figures and index.md in <run dir>/report",
        cmd_report,
        with_overrides=False,
    )
    report.add_argument("run_dir", type=Path, metavar="run_dir", help="a training run directory")
    config = commands.add_parser("config", help="show the resolved config or the config groups")
    config_commands = config.add_subparsers(dest="config_command", metavar="action", required=True)
    show = config_commands.add_parser(
        "show",
        help="print the resolved config for these overrides",
        epilog=OVERRIDE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_override_arguments(show)
    show.set_defaults(handler=cmd_config_show)
    groups = config_commands.add_parser("groups", help="list config groups and their options")
    groups.set_defaults(handler=cmd_config_groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except FmcoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130
