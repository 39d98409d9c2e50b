"""Which ingress partition owns a record (``streams.engine.routing.owner``)."""

from __future__ import annotations

from streams.engine.routing import owner
from streams.wire import ids
from streams.wire.records import Invoke, Target

PARTITIONS = 16


def test_a_keyless_idempotent_call_goes_where_its_key_derives_whatever_id_it_gives() -> None:
    """It went where the id it gave routes, and was stored there under the id its key
    derives, which routes elsewhere: attach and cancel by that id found nothing, and the
    same call sent with another id (or none) ran again on the key's partition."""
    target = Target(service="Svc", handler="h")
    derived = ids.idempotent_id("Svc", None, "h", "k")
    home = ids.partition_of(derived, PARTITIONS)
    given = next(
        inv_id
        for inv_id in (ids.new_id(None, PARTITIONS) for _ in range(1_000))
        if ids.partition_of(inv_id, PARTITIONS) != home
    )
    for invocation_id in (given, None, derived):
        record = Invoke(target=target, idempotency_key="k", invocation_id=invocation_id)
        assert owner(record, PARTITIONS, here=0) == home, invocation_id
    plain = Invoke(target=target, invocation_id=given)
    assert owner(plain, PARTITIONS, here=0) == ids.partition_of(given, PARTITIONS)
