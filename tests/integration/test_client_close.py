"""A client closed while calls wait for their outcomes: every waiting call ends, and is told
that its invocation may go on (not that Kafka refused its record, which a caller would
retry), even when the close itself is cancelled."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from streams.client import Client, ClientClosed
from streams.kafka import broker
from streams.kafka.admin import create_topics
from streams.settings import Settings
from streams.wire.topics import Topics
from tests.integration.helpers import poll_until


async def waiting_call(client: Client) -> asyncio.Task[object]:
    """A call no worker answers (none runs), once it waits for its outcome."""
    call = asyncio.create_task(client.object("Tally", "closing", "add").request(1))

    async def awaited() -> int:
        return client.awaited

    await poll_until(awaited, 1, 30, "the call waiting for its outcome")
    return call


async def test_a_call_waiting_when_the_client_closes_is_told_it_closed(topics: Settings) -> None:
    client = Client(topics)
    await client.start()
    call = await waiting_call(client)
    await client.close()
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(call, 30)


async def test_a_cancelled_close_still_ends_the_calls_that_wait(topics: Settings) -> None:
    """No response can come once the close has begun: a close cancelled half way must not
    leave the calls waiting for good. It goes on to its end, which a second close waits
    for (and so the client's Kafka handles are closed too)."""
    client = Client(topics)
    await client.start()
    call = await waiting_call(client)
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0)  # one turn of the loop: the close runs to its first wait
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(call, 30)
    await asyncio.wait_for(client.close(), 30)
    assert not hasattr(client._kafka, "_producer"), "the close did not run to its end"


async def test_a_client_started_again_after_a_close_closes_again(topics: Settings) -> None:
    client = Client(topics)
    await client.start()
    await client.close()
    await client.start()
    call = await waiting_call(client)
    await asyncio.wait_for(client.close(), 30)
    assert not hasattr(client._kafka, "_producer"), "the second close did not run"
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(call, 30)


async def test_a_call_or_send_after_the_close_is_told_it_closed(topics: Settings) -> None:
    """The producer is gone then: a call raised ``AttributeError``, and a Faust request
    registered its waiter and waited out its whole timeout."""
    client = Client(topics)
    await client.start()
    await client.close()
    with pytest.raises(ClientClosed, match="the client is closed") as raised:
        await asyncio.wait_for(client.object("Tally", "closed", "add").request(1), 30)
    assert not raised.value.may_be_written, "nothing was written: the ingress answers 503"
    with pytest.raises(ClientClosed, match="the client is closed"):
        await asyncio.wait_for(client.object_send("Tally", "closed", "add").send(1), 30)
    with pytest.raises(ClientClosed, match="the client is closed"):
        client.expect(client.new_request_id())
    assert client.awaited == 0


def every_thread_stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is in the stopped state (``T``)."""
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # a thread that ended meanwhile
        if state not in ("T", "t"):
            return False
    return True


async def test_a_record_sent_and_unanswered_is_not_reported_refused_at_the_close(
    tmp_path: Path,
) -> None:
    """A record sent to a broker that stopped answering is retried once its request times
    out, and librdkafka knows it may have been written. The close purged it from the
    producer's queue, and the client reported that Kafka did not take it
    (``KafkaUnavailable``: the ingress's 503, "not written"), though the broker, going on,
    writes it once it goes on (seen when this was found). A broker of its own, stopped
    (SIGSTOP) and let go again by its PID."""
    running = broker.start(tmp_path / "kafka", port=0)
    stopped = False
    try:
        settings = Settings(bootstrap_servers=running.bootstrap, namespace="purge", partitions=1,
                            kafka={"socket.timeout.ms": "1500"})  # fmt: skip
        create_topics(settings)
        topic = Topics(settings.namespace).ingress
        client = Client(settings)
        await client.start()
        try:
            await asyncio.wait_for(client._kafka.produce(topic, b"{}", 0, "first"), 60)
            os.kill(running.pid, signal.SIGSTOP)
            stopped = True

            async def all_stopped() -> bool:
                return every_thread_stopped(running.pid)

            # kill() returns once the signal is queued; until each thread of the JVM has
            # stopped, one still running could take the record and answer it.
            await poll_until(all_stopped, True, 10, "every thread of the broker stopped")
            sent = asyncio.create_task(client._kafka.produce(topic, b"{}", 0, "unanswered"))
            # The close flushes for 5 s: the request times out in 1.5 s, the connection is
            # dropped, and the record goes back to the queue to be retried once one is up
            # again (none is: the broker takes the connection, never answers). Then it purges.
            await asyncio.wait_for(client.close(), 60)
            with pytest.raises(ClientClosed) as raised:
                await asyncio.wait_for(sent, 10)
            assert raised.value.may_be_written
        finally:
            await asyncio.wait_for(client.close(), 60)  # no-op once closed
    finally:
        if stopped:
            os.kill(running.pid, signal.SIGCONT)
        broker.stop(tmp_path / "kafka")
