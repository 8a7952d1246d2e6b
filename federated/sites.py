"""Meeting the sites: wait for them to connect, ask each who it is and what it starts from, and
continue from the federation's last complete round. Both servers (plain and SecAgg+) begin here."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from omegaconf import DictConfig

from fmcore.config import to_yaml
from fmcore.errors import ConfigError, FmcoreError
from fmcore.federated.federation_config import federated_section
from fmcore.federated.store import GlobalState, RoundStore
from fmcore.federated.wire import CONFIG_RECORD, SITE_RECORD, to_numpy
from fmcore.io import atomic_write_text
from fmcore.run_files import RUN_CONFIG_FILE

log = logging.getLogger("fmcore.federated")
FEDERATION_ID_FILE = "federation.id"
#: The opening query's flag: the federation starts now, so sites load ``init=`` for their answer.
FRESH_KEY = "fresh"


@dataclass(frozen=True)
class SiteInfo:
    node_id: int
    name: str
    groups: tuple[str, ...]


def await_sites(grid: Grid, expected: int, minimum: int, timeout: float) -> list[int]:
    """Node ids once ``expected`` sites are connected, or ``minimum`` when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            if len(nodes) >= minimum:
                return nodes
            raise FmcoreError(
                f"only {len(nodes)} of federated.sites={expected} sites connected within"
                f" {timeout:.0f} s (federated.min_sites={minimum}); are the SuperNodes running?"
            )
        time.sleep(1.0)


def describe_sites(
    grid: Grid, nodes: list[int], federation: str, timeout: float, fresh: bool
) -> tuple[dict[int, SiteInfo], GlobalState]:
    """Ask every site who it is; the first site (by name) of a group gives its initial weights
    (``init=`` loaded only when ``fresh``: a resumed federation has its own)."""
    query = RecordDict({CONFIG_RECORD: ConfigRecord({"federation": federation, FRESH_KEY: fresh})})
    messages = [Message(query, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    sites: dict[int, SiteInfo] = {}
    initial: GlobalState = {}
    replies = sorted(
        (r for r in grid.send_and_receive(messages, timeout=timeout) if not failed_reply(r)),
        key=lambda reply: str(reply.content[SITE_RECORD]["name"]),
    )
    for reply in replies:
        name = str(reply.content[SITE_RECORD]["name"])
        if any(site.name == name for site in sites.values()):
            raise ConfigError(f"two SuperNodes call themselves site '{name}': give each its own")
        groups = tuple(reply.content.array_records)
        sites[reply.metadata.src_node_id] = SiteInfo(reply.metadata.src_node_id, name, groups)
        for group in groups:
            initial.setdefault(group, to_numpy(reply.content[group]))
    return sites, initial


def failed_reply(reply: Message) -> bool:
    if reply.has_error():
        log.warning("node %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
        return True
    return False


@dataclass
class OpenedFederation:
    """A federation whose sites have answered: its id, its sites, and where it continues."""

    federation: str
    sites: dict[int, SiteInfo]
    last_round: int  # the last complete round (0 for a new federation)
    state: GlobalState  # global weights after it, with the first site's for new groups


def open_federation(
    grid: Grid, config: DictConfig, run_dir: Path, store: RoundStore, min_sites: int, why: str
) -> OpenedFederation:
    """What every server does first: save the config, wait for the sites, ask each who it is,
    and continue from the last complete round. ``min_sites`` sites must answer (``why`` says
    what sets that number)."""
    settings = federated_section(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_CONFIG_FILE, to_yaml(config))
    nodes = await_sites(grid, settings.sites, min_sites, settings.connect_timeout)
    federation = federation_id(run_dir)
    resumed = store.latest()
    sites, initial = describe_sites(
        grid, nodes, federation, settings.round_timeout, fresh=resumed is None
    )
    if len(sites) < min_sites:
        raise FmcoreError(
            f"only {len(sites)} site(s) answered, fewer than {min_sites} ({why});"
            " see the site errors above"
        )
    last, state = resumed if resumed is not None else (0, {})
    for group, entries in initial.items():
        state.setdefault(group, entries)
    return OpenedFederation(federation, sites, last, state)


def federation_id(run_dir: Path) -> str:
    """The federation's name, made once per run directory: sites key their state by it, so two
    federations never share a site's checkpoints (and a restarted one finds them again)."""
    path = run_dir / FEDERATION_ID_FILE
    if not path.exists():
        atomic_write_text(path, f"{run_dir.name}-{uuid.uuid4().hex[:8]}\n")
    return path.read_text().strip()
