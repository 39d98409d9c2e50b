"""Idempotency keys: duplicates within retention get the same invocation and outcome."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from streams.client import Client
from streams.engine.spill import SpillFailed
from streams.kafka.worker import Worker
from streams.wire.partitioning import partition_of_key
from streams.wire.records import Target


async def test_concurrent_duplicates_run_once_and_share_one_answer(
    client: Client, worker: Worker
) -> None:
    target = Target(service="Tally", key="idem", handler="add")
    answers = await asyncio.gather(
        *(client.call(target, 5, idempotency_key="pay-1") for _ in range(20))
    )
    assert {inv_id for inv_id, _ in answers} == {answers[0][0]}, "one invocation id"
    assert {response.value for _, response in answers} == {5}
    assert await client.object("Tally", "idem", "count").request() == 5, "ran once"
    # Later duplicates get the retained outcome, without running again.
    again_id, again = await client.call(target, 5, idempotency_key="pay-1")
    assert (again_id, again.value) == (answers[0][0], 5)
    assert await client.object("Tally", "idem", "count").request() == 5


async def test_idempotent_http_sends_get_the_same_id(ingress_url: str, client: Client) -> None:
    ids = []
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(
                f"{ingress_url}/Tally/idem-send/add/send", json=1,
                headers={"idempotency-key": "once"},
            ) as reply:  # fmt: skip
                assert reply.status == 202
                body = await reply.json()
                ids.append(body["invocationId"])
                statuses.append(body["status"])
        assert statuses == ["Accepted", "PreviouslyAccepted", "PreviouslyAccepted"]
        # Attach and output by idempotency key: /restate/invocation/Obj/key/handler/idemKey/..
        for verb in ("attach", "output"):
            path = f"/restate/invocation/Tally/idem-send/add/once/{verb}"
            async with http.get(f"{ingress_url}{path}") as reply:
                assert reply.status == 200, path
                assert await reply.json() == 1
        async with http.get(
            f"{ingress_url}/restate/invocation/Tally/idem-send/add/nope/output"
        ) as reply:
            assert reply.status == 404
        async with http.post(
            f"{ingress_url}/Tally/idem-send/add", json=1, headers={"idempotency-key": "other"}
        ) as reply:
            assert reply.status == 200
    assert len(set(ids)) == 1
    # The call with another key ran after the three sends (one key, exclusive, in order).
    assert await client.object("Tally", "idem-send", "count").request() == 2


async def test_keys_are_forgotten_after_the_retention(client: Client, worker: Worker) -> None:
    target = Target(service="Brief", key="b", handler="bump")
    _, first = await client.call(target, idempotency_key="k")
    _, duplicate = await client.call(target, idempotency_key="k")
    assert (first.value, duplicate.value) == (1, 1)
    began = time.monotonic()
    while True:
        _, later = await client.call(target, idempotency_key="k")
        if later.value == 2:
            break
        assert later.value == 1
        assert time.monotonic() - began < 20, "the key was never forgotten"
        await asyncio.sleep(0.25)
    assert time.monotonic() - began >= 1.0, "forgotten before its 2 s retention"


async def test_a_partition_whose_spill_fails_is_restored_and_runs_each_call_once(
    client: Client, worker: Worker
) -> None:
    """The idempotency keys are on disk (streams/engine/spill.py). When that fails, the
    worker commits nothing more of the partition: it restores its partitions from Kafka,
    with new spills, and the call that met the failure runs once, after the restore."""
    target = Target(service="Tally", key="spilled", handler="add")
    before_id, before = await client.call(target, 5, idempotency_key="before")
    assert before.value == 5
    partition = partition_of_key("spilled", worker.partitions)
    broken = worker.processors[partition]
    assert broken.spill.db is not None
    broken.spill.db.execute("DROP TABLE dedup")  # every lookup of an idempotency key fails
    _, after = await asyncio.wait_for(client.call(target, 7, idempotency_key="after"), 60)
    assert after.value == 12, "the call did not run once on the state before it"
    assert isinstance(broken.spill.failed, SpillFailed), "the call did not meet the failure"
    assert worker.processors[partition] is not broken, "the partition was not restored"
    assert broken.spill.db is None, "the failed spill was kept"
    again_id, again = await client.call(target, 5, idempotency_key="before")
    assert (again_id, again.value) == (before_id, 5), "the retained outcome was lost"
    assert await client.object("Tally", "spilled", "count").request() == 12
