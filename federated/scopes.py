"""Aggregation scopes: which of a site's weights are averaged with whom.

``shared`` entries (the trunk) form one group across all sites; ``domain`` entries (tokenizer,
heads) form one group per domain and modality, averaged only among sites of that domain; ``local``
entries never leave the site.
"""

from __future__ import annotations

import torch

from fmcore.method import Method, Scope
from fmcore.run_files import SHARED_GROUP, domain_group


def site_groups(domain: str, modality: str) -> tuple[str, str]:
    """The two groups a site of this domain and modality belongs to."""
    return SHARED_GROUP, domain_group(domain, modality)


def split_by_group(
    method: Method, domain: str, modality: str
) -> dict[str, dict[str, torch.Tensor]]:
    """The method's state dict split into its groups; ``local`` entries left out."""
    state = method.state_dict()
    scopes = method.scopes()
    groups: dict[str, dict[str, torch.Tensor]] = {
        SHARED_GROUP: {},
        domain_group(domain, modality): {},
    }
    for key, scope in scopes.items():
        if scope == Scope.SHARED:
            groups[SHARED_GROUP][key] = state[key]
        elif scope == Scope.DOMAIN:
            groups[domain_group(domain, modality)][key] = state[key]
    return groups
