"""Dead letters replayed to the ingress topic: one invocation however often a letter is.

``kourier dlq replay`` writes each letter's record back with ``REPLAY_HEADER``, the place
(``<ingress topic>/<partition>/<offset>``) of the record first set aside; a replay set aside
again keeps it, so the replays of a letter, and of the letters they became, name one place.
A call that names neither an invocation id nor an idempotency key takes
``kourier.replay-of/<place>`` as its idempotency key, before it is routed (a keyless call's
key names its partition): every replay of it is one invocation, its outcome kept for the
service's idempotency retention. A call that names its id is one invocation by that id while
its outcome is kept; a workflow's ``run`` is one per workflow id.
"""

from __future__ import annotations

import logging
import re

from streams.engine.registry import Registry
from streams.wire.records import Invoke

log = logging.getLogger("kourier.partition")

#: The idempotency key of a replayed call that named no other, before its place.
REPLAY_KEY = "kourier.replay-of/"


def replay_place(ingress: str, header: str) -> str | None:
    """``header`` when it names a place on the ``ingress`` topic, as a replay's does; None,
    with a warning, for anything else another producer put there (the record is then taken
    as any other, and the header goes no further)."""
    if re.fullmatch(rf"{re.escape(ingress)}/\d{{1,10}}/\d{{1,19}}", header):
        return header
    log.warning("a record's %s header names no place on %s: %.80r; ignored",
                "kourier.replay-of", ingress, header)  # fmt: skip
    return None


def as_replay(record: Invoke, place: str, registry: Registry) -> Invoke:
    """``record``, replayed from the letter first set aside at ``place``, with the
    idempotency key that place gives, unless it names an id or a key of its own, runs a
    workflow's handler, or names no handler (it is set aside or refused as it is)."""
    if record.idempotency_key is not None or record.invocation_id is not None:
        return record
    try:
        if registry.resolve(record.target).kind == "workflow":
            return record
    except LookupError:
        return record
    return record.model_copy(update={"idempotency_key": REPLAY_KEY + place})
