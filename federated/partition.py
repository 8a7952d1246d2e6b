"""Splitting one dataset among simulated sites: IID, or whole groups (label, slide...) per site."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from fmcore.domain import Domain
from fmcore.errors import ConfigError

IID = "iid"


def site_share(
    domain: Domain, refs: Sequence[Any], by: str, site: int, sites: int, seed: int
) -> list[Any]:
    """The references site ``site`` of ``sites`` trains on.

    ``iid``: a seeded shuffle dealt out in turn. Otherwise the groups ``domain.partition_key``
    names (sorted, then shuffled with the seed) are dealt out whole, so no label / slide / patient
    is seen by two sites.
    """
    if by == IID:
        order = list(range(len(refs)))
        random.Random(seed).shuffle(order)
        return [refs[i] for i in sorted(order[site::sites])]
    if by not in domain.partition_keys:
        choices = ", ".join((IID, *domain.partition_keys))
        raise ConfigError(
            f"federated.partition={by}: domain '{domain.name}' can be split by {choices}"
        )
    keys = [domain.partition_key(ref, by) for ref in refs]
    groups = sorted(set(keys), key=str)
    random.Random(seed).shuffle(groups)
    mine = set(groups[site::sites])
    return [ref for ref, key in zip(refs, keys, strict=True) if key in mine]
