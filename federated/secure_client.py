"""Secure aggregation with Flower's SecAgg+, the sites' half.

:func:`secure_aggregation_mod` hands SecAgg+ protocol messages to Flower's ``secaggplus_mod``;
the fit inside it runs the ClientApp's ordinary train handler and returns the groups flattened in
the server's layout order (:mod:`.secure_layout`), which the mod quantizes and masks. A site
checks its own update first (:func:`outgoing_problem`): inside the secure sum the server could
not reject it.
"""

from __future__ import annotations

import json

import flwr.compat.common.recorddict_compat as compat
import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fmcore.federated.secure_layout import (
    CLIPPING_RANGE,
    FEDERATION,
    LAYOUT,
    MAX_WEIGHT,
    NUM_EXAMPLES,
    SERVER_ROUND,
    flatten,
    unflatten,
)
from fmcore.federated.store import GlobalState
from fmcore.federated.updates import update_problem
from fmcore.federated.wire import (
    CONFIG_RECORD,
    METRICS_RECORD,
    SITE_RECORD,
    as_record,
    to_numpy,
)


def secure_aggregation_mod(
    message: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Client mod: SecAgg+ messages go through Flower's ``secaggplus_mod``, whose fit runs the
    ClientApp's own train handler; every other message passes unchanged."""
    if (
        message.metadata.message_type != MessageType.TRAIN
        or RECORD_KEY_CONFIGS not in message.content.config_records
    ):
        return call_next(message, context)

    def fit(fit_message: Message, fit_context: Context) -> Message:
        return secure_fit(fit_message, fit_context, call_next)

    try:
        return secaggplus_mod(message, context, fit)
    except SiteFailed as failed:
        return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(failed)), reply_to=message)


class SiteFailed(Exception):
    """The site sends no masked update this round; the message is what the server learns."""


def secure_fit(message: Message, context: Context, train: ClientAppCallable) -> Message:
    """A legacy fit: unflatten the global weights into groups, train with the ordinary handler,
    check the update and return it flattened in the server's layout, weighted by sample count."""
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    layout = [(str(g), str(k)) for g, k in json.loads(str(fitins.config[LAYOUT]))]
    received = unflatten(layout, parameters_to_ndarrays(fitins.parameters))
    content = RecordDict({group: as_record(entries) for group, entries in received.items()})
    content[CONFIG_RECORD] = ConfigRecord(
        {key: fitins.config[key] for key in (FEDERATION, SERVER_ROUND)}
    )
    message.content = content
    reply = train(message, context)
    if reply.has_error():  # the train handler keeps the details in the site's log
        raise SiteFailed(reply.error.reason)
    dtype = str(reply.content[SITE_RECORD]["update-dtype"])
    groups = {g: to_numpy(reply.content[g], dtype) for g in reply.content.array_records}
    metrics = dict(reply.content[METRICS_RECORD])
    examples = int(metrics[NUM_EXAMPLES])
    problem = outgoing_problem(
        groups,
        received,
        examples,
        float(fitins.config[CLIPPING_RANGE]),
        float(fitins.config[MAX_WEIGHT]),
    )
    if problem is not None:
        site = reply.content[SITE_RECORD]["name"]
        raise SiteFailed(f"site {site} did not send its masked update: {problem}")
    fitres = FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters(flatten(layout, groups)),
        examples,
        {k: v for k, v in metrics.items() if isinstance(v, int | float)},
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)


def outgoing_problem(
    groups: GlobalState,
    received: GlobalState,
    examples: int,
    clipping_range: float,
    max_weight: float,
) -> str | None:
    """Why an update must not enter the secure sum (where the server could not reject it)."""
    if set(groups) != set(received):
        return f"groups {sorted(groups)} differ from the server's {sorted(received)}"
    for group, entries in groups.items():
        problem = update_problem(entries, received[group])
        if problem is not None:
            return f"{group}: {problem}"
    if examples > max_weight:
        return (
            f"{examples} samples exceed federated.secagg.max_weight={max_weight:g};"
            " raise it to at least the largest site's sample count"
        )
    peak = max(
        (float(np.abs(v).max()) for e in groups.values() for v in e.values() if v.size), default=0.0
    )
    if peak * examples / max_weight > clipping_range:
        return (
            f"a weight of magnitude {peak:.4g} times samples / max_weight ="
            f" {examples / max_weight:.4g} lies outside federated.secagg.clipping_range="
            f"{clipping_range:g}, and SecAgg+ would clip it: raise clipping_range"
        )
    return None
