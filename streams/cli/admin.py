"""``kourier invocations|services|state``: requests to the admin HTTP API, and their output.

The CLI talks to the same admin API as the web UI (``--admin-url``, ``KOURIER_ADMIN_URL``),
so both see one index and one set of rules; ``attach`` goes to the ingress. A bulk control
(``kourier invocations cancel --service S``) first asks for a dry run, shows what matched,
and then acts on exactly those invocations: the ids the dry run listed are sent with the
request, so what was shown (and confirmed) is what is acted on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote, urlencode

from streams.cli import output
from streams.errors import KourierError

#: The control verbs that take filters instead of one id.
BULK_OPS = ("cancel", "kill", "purge", "resume")
_FILTERS = ("status", "service", "key")


def bulk_filter(args: argparse.Namespace) -> dict[str, str] | None:
    """The filter of a control command, or ``None`` when it names one invocation by id.

    Exactly one of the two: an id with filters is ambiguous (which wins?), and neither
    would mean every invocation, which the admin API refuses anyway.
    """
    filters = {name: value for name in _FILTERS if (value := getattr(args, name, None))}
    if args.id and filters:
        flags = ", ".join(f"--{name}" for name in filters)
        raise ValueError(f"give an invocation id or filters ({flags}), not both")
    if not args.id and not filters:
        raise ValueError(
            f"{args.op} needs an invocation id, or filters: --service, --status, --key"
        )
    if args.id and getattr(args, "dry_run", False):
        raise ValueError("--dry-run goes with filters; `describe ID` shows one invocation")
    return filters or None


class Unanswered(KourierError):
    """The admin API or the ingress could not be reached, or did not answer in time: the
    same command may succeed later (exit 1, "try again")."""

    retriable = True


def http(
    method: str, url: str, payload: Any = None, timeout: float | None = 120.0
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body) for 2xx and 4xx/5xx alike. With
    ``timeout`` None it waits as long as the server takes (an attach, a bulk action)."""
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    data = json.dumps(payload).encode() if payload is not None else None
    request = Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    token = os.environ.get("KOURIER_TOKEN", "").strip()  # as Settings reads it
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urlopen(request, timeout=timeout) as response:
            body = response.read() or b"null"
            try:
                return response.status, json.loads(body)
            except ValueError:  # (a usage error: exit 2)
                raise ValueError(
                    f"{url} answered {response.status} with something that is not JSON: is it "
                    "Kourier's admin API (--admin-url)?"
                ) from None
    except HTTPError as error:
        try:
            body = error.read()
        except (OSError, HTTPException) as cut:  # the error's body cut short (a server
            raise Unanswered(f"no answer from {url}: {cut!r}") from None  # going away)
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"code": error.code, "message": body.decode(errors="replace")}
    except URLError as error:
        message = f"cannot reach {url}: {error.reason} (is `kourier ingress` up?)"
        raise Unanswered(message) from None
    except TimeoutError:
        within = "" if timeout is None else f" within {timeout:.0f} s"
        raise Unanswered(f"no answer from {url}{within}") from None
    except (OSError, HTTPException) as error:  # the connection dropped mid-answer
        raise Unanswered(f"no answer from {url}: {error!r}") from None


def admin(args: argparse.Namespace) -> int:
    base = args.admin_url.rstrip("/")
    op = getattr(args, "op", None)
    render: output.Render | None = None
    if args.command == "services":
        status, body = http("GET", f"{base}/services")
        render = output.services
    elif args.command == "state":
        # By query: any key, "/" in it or "." or "" as it, which no path segment holds.
        service, key = quote(args.service, safe=""), urlencode({"key": args.key})
        status, body = http("GET", f"{base}/state/{service}?{key}")
        render = output.state
    elif op == "list":
        query = {"status": args.status, "service": args.service, "key": args.key}
        params = urlencode({k: v for k, v in query.items() if v} | {"limit": args.limit})
        status, body = http("GET", f"{base}/invocations?{params}")
        render = output.invocations
    elif op == "deadlocks":
        status, body = http("GET", f"{base}/deadlocks")
        render = output.deadlocks
    elif op == "describe":
        status, body = http("GET", f"{base}/invocations/{quote(args.id)}")
        render = output.detail
    elif op == "attach":
        ingress = args.ingress_url.rstrip("/")
        # As long as it runs: a delayed send, a workflow waiting on a promise.
        status, body = http("GET", f"{ingress}/restate/attach/{quote(args.id)}", timeout=None)
    else:
        filters = bulk_filter(args)
        if filters is not None:
            return bulk(args, base, filters)
        status, body = http("PATCH", f"{base}/invocations/{quote(args.id)}/{op}")
        render = output.control
    return show(args, status, body, render)


def show(args: argparse.Namespace, status: int, body: Any, render: output.Render | None) -> int:
    """Print an answer; exit 1 on an error status (its message on stderr for a person)."""
    if status >= 400 and not output.wants_json(args):
        said = output.control(body) if isinstance(body, dict) else str(body)
        print(f"kourier: {output.terminal_safe(said)}", file=sys.stderr)
        return 1
    output.emit(args, body, render)
    return 0 if status < 400 else 1


def bulk(args: argparse.Namespace, base: str, filters: dict[str, str]) -> int:
    """Dry run, then (with ``--yes`` or a "y" at the terminal) the action on what it listed."""
    url = f"{base}/invocations/{args.op}?{urlencode(filters | {'limit': args.limit})}"
    status, dry = http("POST", f"{url}&dry_run=true")
    if status >= 400 or args.dry_run or not dry["ids"]:
        return show(args, status, dry, output.bulk)
    count = len(dry["ids"])
    question = f"{args.op.capitalize()} {count} invocation{'s' if count != 1 else ''}?"
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError(
                f"{count} invocations match; pass --yes to {args.op} them "
                "(--dry-run lists them), or run this at a terminal to be asked"
            )
        print(output.terminal_safe(output.bulk(dry)), file=sys.stderr)
        print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("kourier: nothing done", file=sys.stderr)
            return 1
    status, done = http("POST", url, {"ids": dry["ids"]}, timeout=None)  # 30 s a control
    code = show(args, status, done, output.bulk)
    return code if code else (1 if done.get("failed") else 0)
