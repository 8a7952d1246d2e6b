"""The server optimizer's state, kept with the rounds so a resumed federation continues it.

Flower's server-side optimizers keep their state as plain attributes of the strategy: FedAdam,
FedYogi and FedAdagrad (``FedOpt``) their moments ``m_t`` and ``v_t`` (dicts of arrays), FedAvgM
its ``momentum_vector`` (a list of arrays). A restart that lost them would start the moments
from zero again, a different optimizer from the round on. Each aggregation group has its own
strategy instance (and so its own state); wrappers (fmcore's, Flower's DP ones) are looked
through to the strategy that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.serverapp.strategy import Strategy

#: The optimizer attributes of Flower's strategies (flwr/serverapp/strategy/fedopt.py, fedavgm.py).
OPTIMIZER_ATTRIBUTES = ("m_t", "v_t", "momentum_vector")


def innermost(strategy: Strategy) -> Strategy:
    """The strategy under every wrapper: fmcore's keep it in ``inner``, Flower's DP ones in
    ``strategy``."""
    while True:
        inner = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
        if not isinstance(inner, Strategy):
            return strategy
        strategy = inner


def keeps_state(strategy: Strategy) -> bool:
    """Whether the strategy is one of Flower's server optimizers (FedOpt, FedAvgM)."""
    inner = innermost(strategy)
    return any(hasattr(inner, attribute) for attribute in OPTIMIZER_ATTRIBUTES)


def optimizer_state(strategies: Mapping[str, Strategy]) -> dict[str, np.ndarray]:
    """Every group's optimizer arrays as ``<group>/<attribute>/<key or index>``; empty for
    strategies without state (FedAvg) and before the first aggregation."""
    flat: dict[str, np.ndarray] = {}
    for group, strategy in strategies.items():
        inner = innermost(strategy)
        for attribute in OPTIMIZER_ATTRIBUTES:
            value = getattr(inner, attribute, None)
            if isinstance(value, dict):
                flat.update({f"{group}/{attribute}/{k}": v for k, v in value.items()})
            elif isinstance(value, list):
                flat.update({f"{group}/{attribute}/{i}": v for i, v in enumerate(value)})
    return flat


def restore_optimizer_state(
    strategies: Mapping[str, Strategy], flat: Mapping[str, np.ndarray]
) -> None:
    """Set the attributes :func:`optimizer_state` saved back on the groups' strategies."""
    values: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, array in flat.items():
        group, attribute, key = name.split("/", 2)
        values.setdefault((group, attribute), {})[key] = array
    for (group, attribute), entries in values.items():
        inner = innermost(strategies[group])
        if attribute == "momentum_vector":
            setattr(inner, attribute, [entries[str(i)] for i in range(len(entries))])
        else:
            setattr(inner, attribute, entries)
