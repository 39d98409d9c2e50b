"""``kourier call`` and ``kourier send``: a call or a send through the Python client, its
invocation id said before any wait, and a word when no worker hosts the service."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable
from typing import Any

from streams.cli import commands
from streams.cli.commands import say, settings_of
from streams.errors import KourierError


def _parse_target(text: str) -> Any:
    from pydantic import ValidationError

    from streams.wire.records import Target, first_problem

    parts = text.strip("/").split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"target {text!r} must be Service/handler or Object/key/handler")
    try:
        if len(parts) == 2:
            return Target(service=parts[0], handler=parts[1])
        return Target(service=parts[0], key=parts[1], handler=parts[2])
    except ValidationError as error:  # one line, not pydantic's four
        raise ValueError(f"target {text!r}: {first_problem(error, 'target')}") from None


def call(args: argparse.Namespace) -> int:
    import asyncio

    from streams.client import Client, SendReceipt
    from streams.client.client import send_may_repeat
    from streams.http.routes import parse_duration
    from streams.kafka.threads import Unwaited
    from streams.wire.records import Response, load_json

    target = _parse_target(args.target)
    try:  # as the HTTP ingress reads a body: NaN would go as null, silently
        argument = load_json(args.argument) if args.argument is not None else None
    except RecursionError:
        raise ValueError("the argument is nested deeper than the JSON parser goes") from None
    except ValueError as error:
        raise ValueError(
            f"the argument {args.argument[:200]!r} is not JSON ({error}); a string is quoted:"
            " '\"ada\"'"
        ) from None
    delay = None if getattr(args, "delay", None) is None else parse_duration(args.delay)
    timeout = None
    if getattr(args, "timeout", None) is not None:
        try:
            timeout = parse_duration(args.timeout).total_seconds()
        except KourierError:
            raise ValueError(f"--timeout {args.timeout!r}: use 500ms, 5s, 10m or PT1M") from None

    called: list[str] = []  # the invocation's id, once said
    ended: list[int] = []  # the exit code, once the outcome is printed (the close may follow)

    async def main() -> int:
        # --timeout bounds the whole command, Kafka's connection and the catalog included.
        # A start it ends may leave a thread in a Kafka call for Kafka's own 30 s: the loop
        # does not wait for it, and the command then ends at once (EXIT_AT_ONCE).
        loop = asyncio.get_running_loop()
        loop.set_default_executor(Unwaited(thread_name_prefix="kourier-call"))
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                return await invoke()
        except TimeoutError:
            if not deadline.expired():
                raise  # another's
            commands.EXIT_AT_ONCE = True
            if ended:  # the outcome came, and the client's close outlasted the timeout
                return ended[0]
            if not called:
                say(f"kourier: no answer from Kafka within {args.timeout}; nothing was written")
                return 1
            attach = f"`kourier invocations attach {called[0]}`"
            say(f"kourier: no answer within {args.timeout}; invocation {called[0]} may still"
                f" run, if it was written ({attach} waits for its outcome, or answers 404"
                " when there is none to wait for)")  # fmt: skip
            return 1

    async def invoke() -> int:
        async with Client(settings_of(args)) as client:
            services = await client.catalog()
            if target.service not in services:  # announced a moment ago, perhaps
                services = await client.catalog(refresh=True)
            inv_id = client.invocation_id_for(target, args.idempotency_key)
            sending = args.command == "send"
            # A send that may meet an earlier one waits, as a call does, for a worker to say
            # whether it is new (Client.send_to).
            waits = not sending or send_may_repeat(target, args.idempotency_key, inv_id)
            if target.service not in services:
                what = "message" if sending else "call"
                refused = "answers 404" if waits else "dead-letters it"
                if not waits:
                    said = "and this command returns"
                elif timeout is None:
                    said = "and this command with it"
                else:
                    said = f"and this command up to {args.timeout}"
                say(f"kourier: no worker has announced {target.service}: with no worker running,"
                    f" the {what} waits in Kafka until one does, {said}; a running worker that"
                    f" does not host it {refused} (`kourier services` lists those"
                    " announced)")  # fmt: skip
            if waits:  # said before the wait, so that it can be looked up or cancelled
                say(f"invocation {inv_id}")
            called.append(inv_id)
            key = args.idempotency_key
            working: Awaitable[SendReceipt | tuple[str, Response]] = (
                client.send_to(target, argument, delay=delay, idempotency_key=key,
                               invocation_id=inv_id)
                if sending
                else client.call(target, argument, idempotency_key=key, invocation_id=inv_id)
            )  # fmt: skip
            ended.append(_print(await working, inv_id))
            return ended[0]

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        # The client's start may be in a Kafka call on the loop's threads (30 s, with no
        # broker): the interpreter would wait for it, silent, as it ends.
        commands.EXIT_AT_ONCE = True
        raise


def _print(done: Any, inv_id: str) -> int:
    """Print a send's receipt, or a call's outcome; the exit code."""
    from streams.client import SendReceipt

    if isinstance(done, SendReceipt):
        print(json.dumps({"invocationId": done.invocation_id, "status": done.status}))
        return 0
    answered_as, response = done
    if answered_as != inv_id:
        say(f"answered as invocation {answered_as}")
    if response.failure is not None:
        print(json.dumps(response.failure.model_dump()))
        return 1
    print(json.dumps(response.value))
    return 0
