"""Bad input, on a real broker: malformed ingress records go to the dead-letter topic with
their reason and are counted; arbitrary input never stalls a partition or loses a call."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.exceptions import TerminalError
from streams.client import Client
from streams.kafka import deadletters
from streams.kafka.admin import admin_client
from streams.kafka.offsets import MissingTopics
from streams.kafka.worker import Worker
from streams.metrics import DEADLETTERS
from streams.settings import Settings
from streams.wire import ids
from streams.wire.deadletter import DeadLetter
from streams.wire.partitioning import partition_for
from streams.wire.records import (
    MAX_INGRESS_BYTES,
    Delayed,
    Invoke,
    RecordError,
    Target,
    decode_ingress,
    encode,
)
from tests.integration.conftest import ROOT
from tests.integration.helpers import poll_until

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
#: Almost-records too: the right kind with wrong or missing fields.
NEAR_MISSES = st.fixed_dictionaries(
    {"kind": st.sampled_from(["invoke", "cancel", "attach", "completion", "kill"])},
    optional={"target": JSON, "v": st.integers(0, 3), "invocation_id": st.text(max_size=40)},
)
PAYLOADS = (
    st.binary(max_size=300)
    | JSON.map(lambda v: json.dumps(v).encode())
    | NEAR_MISSES.map(lambda v: json.dumps(v).encode())
)


PATHS = [
    "Tally/k/add",
    "Tally/add",
    "Relay/echo",
    "Nope/x",
    "restate/call/Tally/k/add",
    "Tally/k/add/send",
    "restate/send/Relay/echo",
]


#: An invoke of ``Tally/k/add`` with the argument left to fill in (``%``).
_TALLY_ADD = (b'{"v": 1, "kind": "invoke", "target": {"service": "Tally", "key": "k", '
              b'"handler": "add"}, "argument": %s}')  # fmt: skip


def dead_count(reason: str) -> float:
    return DEADLETTERS.labels(reason)._value.get()


def rejected(payload: bytes) -> bool:
    """Whether Kourier must set ``payload`` aside (it does not decode, or is too large)."""
    if len(payload) > MAX_INGRESS_BYTES:
        return True
    try:
        record = decode_ingress(payload)
    except RecordError:
        return True
    named = getattr(record, "invocation_id", None)
    routed_by_key = isinstance(record, Invoke) and record.target.key is not None
    if named is not None and not routed_by_key:
        try:
            ids.validate(named)
        except ids.InvalidId:
            return True  # it names no partition
    return False


def dlq_command(topics: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``kourier dlq ARGS`` against ``topics``' broker and namespace."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), KOURIER_BOOTSTRAP_SERVERS=topics.bootstrap_servers,
               KOURIER_NAMESPACE=topics.namespace)  # fmt: skip
    command = [sys.executable, "-m", "streams.cli", "dlq", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


async def test_malformed_records_are_dead_lettered_with_reasons(
    topics: Settings, worker: Worker, client: Client
) -> None:
    producer = Producer(topics.client_config({"linger.ms": 1}))
    bad: list[tuple[bytes, str]] = [
        (b"not json at all", "not-json"),
        (b'{"kind": "invoke"}', "bad-schema"),
        (b'{"v": 9, "kind": "invoke"}', "unsupported-version"),
        (json.dumps({"kind": "invoke", "target": {"service": "Nope", "handler": "h"}}).encode(),
         "unknown-target"),
        (b'"' + b"x" * (MAX_INGRESS_BYTES + 10) + b'"', "oversize"),
        # Deeper than Python's JSON parser goes: its RecursionError once stalled the partition.
        (b'{"v": 1, "kind": "invoke", "target": {"service": "Tally", "key": "k", '
         b'"handler": "add"}, "argument": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "not-json"),
        # An integer past Python's 4,300 digits: its ValueError once escaped the decoder.
        (_TALLY_ADD % (b"7" * 5_000), "not-json"),
    ]  # fmt: skip
    per_reason = Counter(reason for _, reason in bad)
    before = {reason: dead_count(reason) for reason in per_reason}
    for index, (payload, _) in enumerate(bad):
        producer.produce(topics.namespace + ".ingress", payload, key=f"bad-{index}".encode())
    assert producer.flush(30) == 0
    # The partition is not stalled: a call after the bad records is answered.
    after = client.object("Tally", "after-bad", "add").request(1)
    assert await asyncio.wait_for(after, 60) == 1
    letters: list[Any] = []
    for _ in range(100):
        letters = await asyncio.to_thread(deadletters.read, topics)
        if len(letters) >= len(bad):
            break
        await asyncio.sleep(0.1)
    # Each with its reason, and the original key and value byte for byte.
    found = {letter.original_key(): letter for letter in letters}
    assert {key: letter.reason for key, letter in found.items()} == {
        f"bad-{i}".encode(): reason for i, (_, reason) in enumerate(bad)
    }
    for i, (payload, _) in enumerate(bad):
        assert found[f"bad-{i}".encode()].original_value() == payload
    for reason, count in per_reason.items():
        assert dead_count(reason) == before[reason] + count, reason

    # The CLI lists them and replays one: the same bytes go back to ingress, and back here.
    def kourier(*args: str) -> Any:
        done = dlq_command(topics, *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    listed = await asyncio.to_thread(kourier, "list", "--reason", "bad-schema")
    assert [(row["reason"], row["dlq_offset"]) for row in listed] == [
        ("bad-schema", found[b"bad-1"].dlq_offset)
    ]
    newest = await asyncio.to_thread(kourier, "list", "--limit", "2")
    assert [row["dlq_offset"] for row in newest] == sorted(x.dlq_offset for x in letters)[-2:]
    offset = found[b"bad-0"].dlq_offset
    # An offset that holds no dead letter (of that reason) replays nothing, and says so.
    for extra in (["--offset", str(offset + 10_000)], ["--reason", "bad-schema"]):
        replay = ["replay", "--offset", str(offset), *extra]
        done = await asyncio.to_thread(dlq_command, topics, *replay)
        assert done.returncode == 2, done.stderr
        assert "kourier: error: no dead letter" in done.stderr
        assert "nothing was replayed" in done.stderr
    replayed = await asyncio.to_thread(kourier, "replay", "--offset", str(offset))
    assert replayed == {"replayed": 1, "offsets": [offset]}
    for _ in range(100):
        again = await asyncio.to_thread(deadletters.read, topics, reason="not-json")
        again = [letter for letter in again if letter.original_key() == b"bad-0"]
        if len(again) == 2:
            break
        await asyncio.sleep(0.1)
    assert [letter.original_value() for letter in again] == [b"not json at all"] * 2
    # Every record deleted (as retention would): nothing to read, said at once. The read
    # waited for a position past the end, which a consumer with nothing to fetch never has.
    dlq = TopicPartition(topics.namespace + ".deadletter", 0)
    marks = Consumer(topics.client_config({"group.id": f"{topics.namespace}.marks"}))
    try:
        _, dlq.offset = await asyncio.to_thread(marks.get_watermark_offsets, dlq, 10)
    finally:
        marks.close()
    admin = admin_client(topics)  # kept while its futures are waited for
    for future in admin.delete_records([dlq]).values():
        future.result(30)
    began = time.monotonic()
    assert await asyncio.to_thread(deadletters.read, topics, timeout=20) == []
    assert time.monotonic() - began < 10


async def test_a_record_too_large_to_move_to_its_partition_stalls_nothing(
    topics: Settings, worker: Worker, client: Client
) -> None:
    """A record on another key's partition is moved with its key. A long key with a value
    under the limit made a record the broker took (1,048,588 bytes) but the worker's
    producer did not (1,000,000): every commit failed, the partitions were restored and the
    step failed again, and no call of the worker was answered."""
    producer = Producer(topics.client_config({"message.max.bytes": 1_040_000}))
    key = "moved-too-large"
    wrong = (partition_for(key, topics.partitions) + 1) % topics.partitions
    send = Invoke(target=Target(service="Tally", key=key, handler="add"), argument=1,
                  mode="send", headers={"pad": "x" * 880_000})  # fmt: skip
    value = encode(send)
    assert len(value) <= MAX_INGRESS_BYTES
    before = dead_count("oversize")
    producer.produce(f"{topics.namespace}.ingress", value, key=b"k" * 120_000, partition=wrong)
    assert producer.flush(30) == 0
    for partition in range(topics.partitions):  # every partition still answers
        after = next(
            f"after-{i}"
            for i in range(1000)
            if partition_for(f"after-{i}", topics.partitions) == partition
        )
        answer = client.object("Tally", after, "add").request(1)
        assert await asyncio.wait_for(answer, 60) == 1, after
    assert dead_count("oversize") == before + 1
    assert await asyncio.wait_for(client.object("Tally", key, "add").request(0), 60) == 0


async def test_a_letter_replayed_twice_is_one_call(
    topics: Settings, worker: Worker, client: Client
) -> None:
    """``kourier dlq replay`` run twice on one letter (once per operator, or again after a
    replay that timed out) made the call twice: a call without an id took its id from
    where its replay landed, which differs each time."""
    value = _TALLY_ADD.replace(b'"key": "k"', b'"key": "twice"') % b"5"
    letter = DeadLetter(reason="unknown-target", detail="Tally was not deployed yet",
                        topic=f"{topics.namespace}.ingress", partition=0, offset=7,
                        payload="", at=datetime.now(UTC))  # fmt: skip
    _key, record, headers = letter.record(b"twice", value)
    offsets: list[int] = []
    producer = Producer(topics.client_config({"linger.ms": 1}))
    dlq = f"{topics.namespace}.deadletter"
    producer.produce(dlq, record, key=b"twice", partition=0, headers=headers,
                     on_delivery=lambda _, m: offsets.append(m.offset()))  # fmt: skip
    assert producer.flush(30) == 0
    assert len(offsets) == 1
    for replay in ("first", "second"):
        done = await asyncio.to_thread(dlq_command, topics, "replay", "--offset", str(offsets[0]))
        assert done.returncode == 0, done.stderr
        # A call made after the replay was written answers after it ran (one key).
        total = await asyncio.wait_for(client.object("Tally", "twice", "add").request(0), 60)
        assert total == 5, f"after the {replay} replay, the letter's call has run once"


async def test_a_replay_writes_the_records_own_headers_again(
    topics: Settings, worker: Worker
) -> None:
    """A dead letter kept only its record's trace context: a producer's own headers were
    gone from the letter, and from the record a replay wrote."""
    producer = Producer(topics.client_config({"linger.ms": 1}))
    unknown = json.dumps({"kind": "invoke", "target": {"service": "Later", "handler": "h"}})
    producer.produce(f"{topics.namespace}.ingress", unknown.encode(), key=b"later",
                     headers=[("x-correlation", b"c-42"), ("x-empty", None)])  # fmt: skip
    assert producer.flush(30) == 0

    async def letters() -> list[dict[str, Any]]:
        listed = await asyncio.to_thread(dlq_command, topics, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        found: list[dict[str, Any]] = json.loads(listed.stdout)
        return found

    async def count() -> int:
        return len(await letters())

    await poll_until(count, 1, 60, "the record set aside")
    (first,) = await letters()
    kept = [["x-correlation", base64.b64encode(b"c-42").decode()], ["x-empty", None]]
    assert first["record_headers"] == kept
    replayed = await asyncio.to_thread(dlq_command, topics, "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    await poll_until(count, 2, 60, "the replay set aside again (Later is still not deployed)")
    again = (await letters())[1]
    assert again["replay_of"] == f"{first['topic']}/{first['partition']}/{first['offset']}"
    assert again["record_headers"] == kept, "the replay did not write the headers again"


async def test_bad_delay_records_are_dead_lettered_and_delays_go_on(
    topics: Settings, worker: Worker, client: Client
) -> None:
    producer = Producer(topics.client_config({"linger.ms": 1}))
    no_id = Delayed(
        due=datetime.now(UTC), invoke=Invoke(target=Target(service="Tally", key="d", handler="add"))
    )
    bad = {b"delay-0": b"not json", b"delay-1": encode(no_id)}
    for key, value in bad.items():
        producer.produce(topics.namespace + ".delay", value, key=key, partition=0)
    assert producer.flush(30) == 0
    await client.object_send("Tally", "after-bad-delay", "add").send(
        1, delay=timedelta(seconds=0.2)
    )

    async def count() -> int:
        value: int = await client.object("Tally", "after-bad-delay", "count").request()
        return value

    await poll_until(count, 1, 60, "a delayed send after the bad delay records")
    letters: list[Any] = []
    for _ in range(100):
        letters = await asyncio.to_thread(deadletters.read, topics)
        if {letter.original_key() for letter in letters} >= set(bad):
            break
        await asyncio.sleep(0.1)
    found = {letter.original_key(): letter for letter in letters}
    assert {key: (found[key].reason, found[key].topic) for key in bad} == {
        b"delay-0": ("not-json", topics.namespace + ".delay"),
        b"delay-1": ("bad-schema", topics.namespace + ".delay"),
    }
    assert [found[key].original_value() for key in bad] == list(bad.values())
    with pytest.raises(ValueError, match="not from the ingress topic"):
        deadletters.replay(topics, [found[b"delay-0"]])
    # The CLI says it is an error that trying again cannot mend (exit 2, not 1).
    offset = str(found[b"delay-0"].dlq_offset)
    done = await asyncio.to_thread(dlq_command, topics, "replay", "--offset", offset)
    assert done.returncode == 2, done.stderr
    assert "kourier: error: dead letters at offsets" in done.stderr
    assert "nothing was replayed" in done.stderr


def test_a_replay_with_no_ingress_topic_says_so_and_produces_nothing(settings: Settings) -> None:
    """A namespace whose ingress topic is gone (or was never made): the replay names the
    topic and refuses, rather than fail on a partition count of zero."""
    letter = DeadLetter(
        reason="not-json",
        detail="",
        topic=settings.namespace + ".ingress",
        partition=0,
        offset=0,
        key=base64.b64encode(b"k").decode(),
        payload=base64.b64encode(b"{").decode(),
        at=datetime.now(UTC),
    )
    with pytest.raises(MissingTopics, match=rf"topic {settings.namespace}\.ingress is missing"):
        deadletters.replay(settings, [letter], timeout=1.0)


def test_listing_dead_letters_of_a_namespace_without_topics_says_so(settings: Settings) -> None:
    """It asked for the watermarks of a partition that does not exist, for 30 s, and then
    reported "Unknown partition"."""
    began = time.monotonic()
    with pytest.raises(MissingTopics, match=rf"topic {settings.namespace}\.deadletter is missing"):
        deadletters.read(settings, timeout=1.0)
    assert time.monotonic() - began < 10, "it waited out more than the given timeout"


async def test_arbitrary_bytes_and_json_never_stall_or_lose_calls(
    topics: Settings, worker: Worker, client: Client
) -> None:
    producer = Producer(topics.client_config({"linger.ms": 5}))
    thrown: list[bytes] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payload=PAYLOADS, key=st.binary(max_size=8) | st.none())
    def throw(payload: bytes, key: bytes | None) -> None:
        producer.produce(topics.namespace + ".ingress", payload, key=key)
        thrown.append(payload)

    await asyncio.to_thread(throw)
    assert producer.flush(30) == 0
    # Calls interleaved with the garbage on every key: each answered, exactly once.
    target = Target(service="Tally", key="prop", handler="add")
    answers = [await client.call(target, 1) for _ in range(10)]
    assert sorted(response.value for _, response in answers) == list(range(1, 11))
    expected = sum(1 for payload in thrown if rejected(payload))
    letters: list[Any] = []
    for _ in range(200):
        letters = await asyncio.to_thread(deadletters.read, topics)
        if len(letters) >= expected:
            break
        await asyncio.sleep(0.1)
    # Everything that could not be decoded is set aside; what decoded (by chance) was handled.
    assert len([x for x in letters if x.reason != "unknown-target"]) == expected
    assert await client.object("Tally", "prop", "count").request() == 10


async def test_arbitrary_http_requests_get_json_errors(ingress_url: str, client: Client) -> None:
    statuses: list[int] = []

    async def probe(path: str, body: bytes, content_type: str) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{ingress_url}/{path}", data=body, headers={"content-type": content_type}
            ) as reply,
        ):
            assert reply.status < 500 or reply.status == 503, (path, reply.status)
            if reply.status >= 400:
                payload = await reply.json(content_type=None)
                assert set(payload) >= {"code", "message"}, payload
            statuses.append(reply.status)

    cases: list[tuple[str, bytes, str]] = []

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        path=st.sampled_from(PATHS) | st.text(alphabet="abcXYZ/%._-", max_size=30),
        body=st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode()),
        content_type=st.sampled_from(["application/json", "text/plain", "application/json; x=1"]),
    )
    def collect(path: str, body: bytes, content_type: str) -> None:
        cases.append((path, body, content_type))

    collect()
    for case in cases:
        await probe(*case)
    assert any(code >= 400 for code in statuses)
    # The ingress still works afterwards.
    assert (await client.service("Relay", "echo").request({"ok": 1}))["value"] == {"ok": 1}


DELAYS = st.sampled_from(["5s", "500ms", "PT5S", "99999999999d", "P99999999D", "1e3s", "-1s", ""])
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


async def test_no_path_header_or_query_gets_a_500(ingress_url: str, client: Client) -> None:
    """Generated paths (keys up to 5,000 characters), idempotency keys (up to 1,500),
    arbitrary headers and delays: every answer is below 500 (or 503), in JSON."""
    cases: list[tuple[str, dict[str, str], dict[str, str]]] = []

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        path=st.sampled_from(PATHS)
        | st.builds(lambda n: f"Tally/{'k' * n}/add", st.integers(4000, 5000))
        | st.builds(lambda n: f"restate/send/Tally/{'k' * n}/add", st.integers(4090, 4100)),
        idempotency_key=st.none() | st.builds(lambda n: "i" * n, st.integers(1, 1500)),
        headers=st.dictionaries(
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
            HEADER_TEXT,
            max_size=4,
        ),
        delay=st.none() | DELAYS,
    )
    def collect(
        path: str, idempotency_key: str | None, headers: dict[str, str], delay: str | None
    ) -> None:
        sent = dict(headers)
        if idempotency_key is not None:
            sent["idempotency-key"] = idempotency_key
        cases.append((path, sent, {} if delay is None else {"delay": delay}))

    collect()
    async with aiohttp.ClientSession() as http:
        for path, headers, query in cases:
            async with http.post(
                f"{ingress_url}/{path}", json=1, headers=headers, params=query
            ) as reply:
                assert reply.status < 500 or reply.status == 503, (path, query, reply.status)
                if reply.status >= 400:
                    payload = await reply.json(content_type=None)
                    assert set(payload) >= {"code", "message"}, payload
    assert (await client.service("Relay", "echo").request({"ok": 2}))["value"] == {"ok": 2}


KEYS = [f"near{i}" for i in range(4)]
VALID_IDS = st.builds(lambda key: ids.new_id(key, 4), st.sampled_from([*KEYS, "elsewhere"]))


async def test_a_record_with_a_header_name_not_utf8_is_taken_without_its_headers(
    topics: Settings, worker: Worker, client: Client
) -> None:
    """Kafka's header keys are strings; another client may write bytes that are not UTF-8.
    confluent-kafka raised SystemError reading them, which ended the worker, and every
    worker that took the partition over after it: the key's calls waited for good. Once
    Python had specialized the call, after a few records (the sends first, here), it did
    not raise there but left the error for a later call, and a list that crashes a repr."""
    for _ in range(20):
        await client.object_send("Tally", "odd-header-before", "add").send(1)
    record = Invoke(target=Target(service="Tally", key="odd-header", handler="add"), argument=5,
                    mode="send")  # fmt: skip
    partition = partition_for("odd-header", topics.partitions)
    # confluent-kafka writes a bytes name as its repr; kcat writes the bytes as they are.
    kcat = [b"kcat", b"-P", b"-b", topics.bootstrap_servers.encode(), b"-t",
            f"{topics.namespace}.ingress".encode(), b"-p", str(partition).encode(),
            b"-k", b"odd-header", b"-H", b"\xff\xfe=x",
            b"-H", b"traceparent=00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"]  # fmt: skip
    written = await asyncio.to_thread(
        subprocess.run, kcat, input=encode(record), capture_output=True, timeout=60
    )
    assert written.returncode == 0, written.stderr
    after = await asyncio.wait_for(client.object("Tally", "odd-header", "add").request(1), 60)
    assert after == 6, "the record with the odd header was not applied, or twice"


def near_miss(kind: str, key: str, some_id: str, entry: int) -> dict[str, Any]:
    """A record of the right shape that is wrong all the same: ids nobody knows, ids that
    route elsewhere, handlers nobody hosts, completions and starts for nothing."""
    target = {"service": "Tally", "key": key, "handler": "add"}
    records: dict[str, dict[str, Any]] = {
        "foreign-caller": {"kind": "invoke", "target": target, "argument": 1,
                           "caller": {"invocation_id": some_id, "entry": entry}},
        "stray-id": {"kind": "invoke", "target": target, "argument": 1,
                     "invocation_id": some_id},
        "malformed-caller": {"kind": "invoke", "target": target, "argument": 1,
                             "caller": {"invocation_id": some_id[:-3] + "xyz", "entry": 0}},
        "unknown-handler": {"kind": "invoke", "target": {**target, "handler": "nope"}},
        "foreign-service": {"kind": "invoke", "target": {"service": "Nope", "handler": "x"}},
        "control": {"kind": "cancel", "invocation_id": some_id, "request_id": "r"},
        "kill": {"kind": "kill", "invocation_id": some_id},
        "resume": {"kind": "resume", "invocation_id": some_id},
        "attach": {"kind": "attach", "request_id": "r", "invocation_id": some_id},
        "completion": {"kind": "completion", "invocation_id": some_id,
                       "caller": {"invocation_id": some_id, "entry": entry}},
        "start": {"kind": "start", "invocation_id": some_id, "seq": entry},
        "late-send": {"kind": "invoke", "target": target, "argument": 1, "mode": "send",
                      "due": "2000-01-01T00:00:00+00:00"},
    }  # fmt: skip
    return records[kind]


NEAR_MISS_KINDS = [
    "foreign-caller", "stray-id", "unknown-handler", "foreign-service", "control", "kill",
    "resume", "attach", "completion", "start", "late-send", "malformed-caller",
]  # fmt: skip


async def test_near_miss_records_never_lock_a_key_or_stop_the_worker(
    topics: Settings, worker: Worker, client: Client
) -> None:
    producer = Producer(topics.client_config({"linger.ms": 5}))
    thrown: list[tuple[str, str]] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        kind=st.sampled_from(NEAR_MISS_KINDS),
        key=st.sampled_from(KEYS),
        some_id=VALID_IDS,
        entry=st.integers(0, 5),
    )
    def throw(kind: str, key: str, some_id: str, entry: int) -> None:
        record = near_miss(kind, key, some_id, entry)
        partition = partition_for(key, topics.partitions)
        producer.produce(f"{topics.namespace}.ingress", json.dumps(record).encode(),
                         key=key.encode(), partition=partition)  # fmt: skip
        if kind == "stray-id" and ids.partition_of(some_id, 4) == partition_for(key, 4):
            kind = "routed-id"  # by chance on its key's partition: a valid call
        thrown.append((kind, key))

    await asyncio.to_thread(throw)
    assert await asyncio.to_thread(producer.flush, 30) == 0
    assert {"foreign-caller", "malformed-caller", "completion"} <= {kind for kind, _ in thrown}
    # Every key still answers after everything thrown at it, and what was a valid call in
    # all of that (an unknown caller, a send due long ago) ran once, in order, before it.
    for key in KEYS:
        valid = ("foreign-caller", "late-send", "routed-id")
        ran = sum(1 for kind, k in thrown if k == key and kind in valid)
        after = await asyncio.wait_for(client.object("Tally", key, "add").request(1), 60)
        assert after == ran + 1, key


async def test_the_client_refuses_an_argument_too_deep_for_a_record(
    worker: Worker, client: Client
) -> None:
    """An argument that the client's JSON check passes alone (254 levels) but that a record
    cannot carry one level down raised pydantic's serialization error out of the client; it
    is the caller's 400, raised before anything is produced, and the next call works."""
    deep: Any = 1
    for _ in range(254):
        deep = [deep]
    with pytest.raises(TerminalError) as raised:
        await client.service("Relay", "echo").request(deep)
    assert raised.value.status_code == 400
    assert "nested deeper than a record can carry" in raised.value.message
    after = await asyncio.wait_for(client.service("Relay", "echo").request({"ok": 3}), 60)
    assert after["value"] == {"ok": 3}


@pytest.mark.parametrize(
    ("key", "refusal"),
    [
        ("", "idempotency key is empty: give one, or none"),
        ("k" * 1025, "idempotency key of 1025 characters; at most 1024"),
    ],
)
async def test_the_client_refuses_an_idempotency_key_a_record_cannot_carry(
    client: Client, key: str, refusal: str
) -> None:
    """An empty or over-long idempotency key given to the client (as ``kourier send
    --idempotency-key ''`` does) was pydantic's multi-line validation error out of the
    record; it is the caller's 400, with the ingress's words, for a workflow's run too."""
    for target in (
        Target(service="Tally", key="k", handler="add"),
        Target(service="Signup", key="ada", handler="run"),
    ):
        for attempt in (
            client.call(target, 1, idempotency_key=key),
            client.send_to(target, 1, idempotency_key=key),
        ):
            with pytest.raises(TerminalError) as raised:
                await attempt
            assert raised.value.status_code == 400
            assert raised.value.message == refusal
