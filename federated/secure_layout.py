"""What the two halves of secure aggregation agree on: the flat vector's layout and the names of
the legacy fit config's entries (the server writes them, each site reads them)."""

from __future__ import annotations

import numpy as np

from fmcore.federated.store import GlobalState, contiguous

Layout = list[tuple[str, str]]  # (group, entry) in the order of the flat vector
LAYOUT = "layout"
CLIPPING_RANGE = "clipping-range"
MAX_WEIGHT = "max-weight"
NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"
FEDERATION = "federation"


def layout_of(state: GlobalState) -> Layout:
    return [(group, key) for group in sorted(state) for key in sorted(state[group])]


def flatten(layout: Layout, state: GlobalState) -> list[np.ndarray]:
    return [contiguous(state[group][key]) for group, key in layout]


def unflatten(layout: Layout, arrays: list[np.ndarray]) -> GlobalState:
    state: GlobalState = {}
    for (group, key), array in zip(layout, arrays, strict=True):
        state.setdefault(group, {})[key] = array
    return state
