"""A client closed while calls wait for their outcomes: every waiting call ends, and is told
that its invocation may go on (not that Kafka refused its record, which a caller would
retry), even when the close itself is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from streams.client import Client, ClientClosed
from streams.settings import Settings
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
