"""The admin API: invocations listed and described from the changelog; resume, purge; the
call tree; bulk control by filter, over HTTP and from the CLI, with its dry run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streams.client import Client
from streams.wire.records import Target
from tests.integration.conftest import ROOT
from tests.integration.helpers import invocation_status, poll_until


async def wait_for_status(
    http: aiohttp.ClientSession, admin_url: str, service: str, status: str
) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + 30
    rows: list[dict[str, object]] = []
    while asyncio.get_running_loop().time() < deadline:
        params = {"service": service, "status": status}
        async with http.get(f"{admin_url}/invocations", params=params) as reply:
            rows = (await reply.json())["invocations"]
        if rows:
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {service} invocation became {status}")


async def test_a_paused_invocation_is_listed_described_and_resumed(
    client: Client, ingress_url: str, admin_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "fixed"
    call = asyncio.create_task(client.service("Fragile", "needs_file").request(str(marker)))
    async with aiohttp.ClientSession() as http:
        paused = await wait_for_status(http, admin_url, "Fragile", "paused")
        assert "does not exist yet" in str(paused["last_error"])
        assert paused["attempt"] == 2
        async with http.get(f"{admin_url}/invocations/{paused['id']}") as reply:
            detail = await reply.json()
        assert detail["argument"] == str(marker)
        async with http.patch(f"{admin_url}/invocations/{paused['id']}/purge") as reply:
            assert reply.status == 409, "only completed invocations purge"
        assert not call.done(), "a paused invocation is parked, not failed"
        marker.touch()
        async with http.patch(f"{admin_url}/invocations/{paused['id']}/resume") as reply:
            assert reply.status == 200
        assert await asyncio.wait_for(call, 30) == "found"


async def test_retained_outcomes_are_described_and_purged(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    target = Target(service="Tally", key="adm", handler="add")
    inv_id, _ = await client.call(target, 3, idempotency_key="keep")
    async with aiohttp.ClientSession() as http:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            async with http.get(f"{admin_url}/invocations/{inv_id}") as reply:
                if reply.status == 200:
                    detail = await reply.json()
                    break
            assert asyncio.get_running_loop().time() < deadline, "never indexed"
            await asyncio.sleep(0.1)
        assert detail["status"] == "completed"
        assert detail["outcome"] == {"value": 3}
        assert detail["idempotency_key"] == "keep"
        assert [e["kind"] for e in detail["journal"]] == ["get", "set"]
        while True:
            async with http.get(f"{admin_url}/state/Tally/adm") as reply:
                state = await reply.json()
            if state:
                break
            assert asyncio.get_running_loop().time() < deadline, "state never indexed"
            await asyncio.sleep(0.1)
        assert state == {"count": 3}
        async with http.patch(f"{admin_url}/invocations/{inv_id}/purge") as reply:
            assert reply.status == 200
        async with http.get(f"{ingress_url}/restate/output/{inv_id}") as reply:
            assert reply.status == 404


async def scheduled_ids(http: aiohttp.ClientSession, admin_url: str, service: str) -> set[str]:
    params = {"service": service, "status": "scheduled"}
    async with http.get(f"{admin_url}/invocations", params=params) as reply:
        return {str(row["id"]) for row in (await reply.json())["invocations"]}


async def schedule(client: Client, prefix: str, count: int) -> list[str]:
    """``count`` sends to ``Tally/<prefix>-<i>/add``, due in ten minutes (nothing races their
    release), with idempotency keys so their cancelled outcomes are kept and can be read."""
    receipts = [
        await client.object_send("Tally", f"{prefix}-{i}", "add").send(
            1, delay=timedelta(minutes=10), idempotency_key=f"{prefix}-{i}"
        )
        for i in range(count)
    ]
    return [receipt.invocation_id for receipt in receipts]


async def test_describe_shows_the_call_tree_both_ways(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    call = asyncio.create_task(
        client.object("Trip", "adm-tree", "plan").request(60_000, idempotency_key="adm-tree")
    )
    async with aiohttp.ClientSession() as http:

        async def plans() -> int:
            params = {"service": "Trip", "key": "adm-tree"}
            async with http.get(f"{admin_url}/invocations", params=params) as reply:
                rows[:] = (await reply.json())["invocations"]
            return len(rows)

        rows: list[dict[str, Any]] = []
        await poll_until(plans, 1, 30, "plan indexed")
        (plan,) = rows
        assert plan["target"] == "Trip/adm-tree/plan"

        async def callees() -> list[tuple[str, bool]]:
            async with http.get(f"{admin_url}/invocations/{plan['id']}") as reply:
                found[0] = await reply.json()
            return [(str(n["target"]), bool(n["indexed"])) for n in found[0]["tree"]["callees"]]

        found: list[dict[str, Any]] = [{}]
        # The caller's journal names the callee first; the callee's own record follows from
        # its partition's transaction, and only then is it indexed.
        expected = [("Trip/adm-tree-hotel/reserve", True)]
        await poll_until(callees, expected, 30, "plan's callees, indexed")
        (reserve,) = found[0]["tree"]["callees"]
        assert found[0]["tree"]["callers"] == [], "called from outside: no caller"
        assert (reserve["via"], reserve["entry"], reserve["indexed"]) == ("call", 0, True)
        assert reserve["status"] in ("running", "suspended")
        assert reserve["created_at"].endswith("Z")
        assert reserve["age_ms"] >= 0
        async with http.get(f"{admin_url}/invocations/{reserve['id']}") as reply:
            below = await reply.json()
        assert below["caller"] == plan["id"]
        assert [(n["id"], n["via"]) for n in below["tree"]["callers"]] == [(plan["id"], "call")]
        assert below["tree"]["callees"] == []
        async with http.patch(f"{admin_url}/invocations/{plan['id']}/cancel") as reply:
            assert reply.status == 202
        done = await invocation_status(http, admin_url, str(plan["id"]), "completed")
        (finished,) = done["tree"]["callees"]
        assert finished["status"] == "completed"
        assert finished["failure"] == {"code": 409, "message": "cancelled"}
    result = await asyncio.gather(call, return_exceptions=True)
    assert getattr(result[0], "status_code", None) == 409


async def test_a_listing_refuses_an_unknown_status_and_a_limit_out_of_range(admin_url: str) -> None:
    """A misspelt status or a limit out of range is a 400 naming the mistake, not an empty list
    that reads as "nothing matched" (the bulk actions refuse them the same way)."""
    async with aiohttp.ClientSession() as http:
        for params, words in (
            ({"status": "runing"}, "unknown status 'runing'"),
            ({"limit": "-1"}, "limit must be between 0 and 10000"),
            # Past SQLite's integers: the index's query raised, a 500.
            ({"limit": str(2**63)}, "limit must be between 0 and 10000"),
        ):
            async with http.get(f"{admin_url}/invocations", params=params) as reply:
                assert reply.status == 400, await reply.text()
                assert words in (await reply.json())["message"]
        async with http.get(f"{admin_url}/invocations", params={"status": "running"}) as reply:
            assert reply.status == 200, await reply.text()


async def test_the_state_of_an_unknown_service_is_404(admin_url: str) -> None:
    """A misspelt service is a 404, not an empty state; a known object with no state yet
    is an empty one."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{admin_url}/state/Taly/k") as reply:
            assert reply.status == 404, await reply.text()
            assert (await reply.json())["message"] == "unknown service 'Taly'"
        async with http.get(f"{admin_url}/state/Tally/never-used") as reply:
            assert reply.status == 200, await reply.text()
            assert await reply.json() == {}


@pytest.mark.parametrize("key", ["..", ".", ""])
async def test_the_state_of_a_key_no_path_can_hold_is_read_by_query(
    client: Client, admin_url: str, key: str
) -> None:
    """Clients resolve ``/state/Tally/..`` to ``/state/`` before they send it: an object
    whose key is ``.`` or ``..`` (or empty), which the Kafka ingress takes, had a state no
    request could read."""
    await client.call(Target(service="Tally", key=key, handler="add"), 6)
    async with aiohttp.ClientSession() as http:

        async def current() -> object:
            async with http.get(f"{admin_url}/state/Tally", params={"key": key}) as reply:
                assert reply.status == 200, await reply.text()
                return await reply.json()

        await poll_until(current, {"count": 6}, 30, f"the state of key {key!r} by query")
        async with http.get(f"{admin_url}/state/Tally") as reply:
            assert reply.status == 400, await reply.text()
            assert "name the key" in (await reply.json())["message"]


async def test_a_change_another_site_asks_for_is_refused(client: Client, admin_url: str) -> None:
    """A web page can POST to the admin API on an operator's machine with no preflight
    (``fetch(..., {mode: "no-cors"})``): with no token configured, any page could cancel or
    kill every invocation. What a browser says another site sent is refused (403); the UI's
    own requests, the CLI's and scripts' go through."""
    sent = await schedule(client, "adm-origin", 1)
    async with aiohttp.ClientSession() as http:
        await poll_until(
            lambda: scheduled_ids(http, admin_url, "Tally"), set(sent), 30, "scheduled sends"
        )
        kill = f"{admin_url}/invocations/kill"
        foreign = [{"origin": "http://shop.example"}, {"origin": "null"},
                   {"sec-fetch-site": "cross-site"}]  # fmt: skip
        for headers in foreign:
            async with http.post(kill, params={"service": "Tally"}, headers=headers) as reply:
                assert reply.status == 403, (headers, await reply.text())
                assert "another origin" in (await reply.json())["message"]
        cancel = f"{admin_url}/invocations/{sent[0]}/cancel"
        async with http.patch(cancel, headers=foreign[0]) as reply:
            assert reply.status == 403
        assert await scheduled_ids(http, admin_url, "Tally") == set(sent), "nothing was done"
        own = {"origin": admin_url, "sec-fetch-site": "same-origin"}  # the UI's
        dry = {"service": "Tally", "dry_run": "true"}
        async with http.post(f"{admin_url}/invocations/cancel", params=dry, headers=own) as reply:
            assert reply.status == 200, await reply.text()
            assert (await reply.json())["ids"] == sent


async def test_bulk_cancel_dry_run_then_real(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    sent = await schedule(client, "adm-bulk", 3)
    async with aiohttp.ClientSession() as http:
        await poll_until(
            lambda: scheduled_ids(http, admin_url, "Tally"), set(sent), 30, "scheduled sends"
        )
        url = f"{admin_url}/invocations/cancel"
        async with http.post(url, params={"service": "Tally", "dry_run": "true"}) as reply:
            assert reply.status == 200, await reply.text()
            dry = await reply.json()
        assert set(dry["ids"]) == set(sent)
        assert dry["matched"] == 3
        assert "results" not in dry
        assert {row["status"] for row in dry["invocations"]} == {"scheduled"}
        assert await scheduled_ids(http, admin_url, "Tally") == set(sent), "a dry run did nothing"

        # The ids a dry run listed narrow the action: two of the three are cancelled.
        chosen = {"ids": dry["ids"][:2]}
        async with http.post(url, params={"service": "Tally"}, json=chosen) as reply:
            done = await reply.json()
        assert done["ids"] == chosen["ids"]
        assert done["results"] == {i: {"code": 200, "status": "success"} for i in chosen["ids"]}
        assert (done["succeeded"], done["failed"]) == (2, 0)
        for invocation_id in chosen["ids"]:
            detail = await invocation_status(http, admin_url, invocation_id, "completed")
            assert detail["outcome"] == {"failure": {"code": 409, "message": "cancelled"}}
        (left,) = set(sent) - set(chosen["ids"])
        assert await scheduled_ids(http, admin_url, "Tally") == {left}

        # Completed ones are passed over, and counted as such; the last one is killed by key.
        async with http.post(url, params={"service": "Tally", "dry_run": "1"}) as reply:
            again = await reply.json()
        assert (again["ids"], again["skipped"]) == ([left], 2)
        key = next(f"adm-bulk-{i}" for i, inv_id in enumerate(sent) if inv_id == left)
        async with http.post(f"{admin_url}/invocations/kill", params={"key": key}) as reply:
            killed = await reply.json()
        assert killed["results"] == {left: {"code": 200, "status": "success"}}

        # Refused: no filter, an unknown status, an unknown action.
        async with http.post(url) as reply:
            assert reply.status == 400
        async with http.post(url, params={"status": "runing"}) as reply:
            assert reply.status == 400
            assert "unknown status" in (await reply.json())["message"]
        async with http.post(f"{admin_url}/invocations/explode?key=k") as reply:
            assert reply.status == 404
        # A body of `null` is not "no ids": it would widen the action to every match.
        async with http.post(url, params={"service": "Tally"}, data=b"null") as reply:
            assert reply.status == 400
            assert "ids" in (await reply.json())["message"]
        deep = b"[" * 5_000 + b"]" * 5_000  # deeper than Python parses: it was a 500
        async with http.post(url, params={"service": "Tally"}, data=deep) as reply:
            assert reply.status == 400
            assert "nested deeper" in (await reply.json())["message"]
        for body in (b"7" * 5_000, b'{"ids": NaN}'):  # a ValueError of Python's: a 500
            async with http.post(url, params={"service": "Tally"}, data=body) as reply:
                assert reply.status == 400, await reply.text()
                assert "not valid JSON" in (await reply.json())["message"]
        # JSON is UTF-8: a charset the header names is not looked up (unknown, it was a 500).
        bogus = {"content-type": "application/json; charset=bogus"}
        async with http.post(url, params={"service": "Tally", "dry_run": "true"},
                             data=b'{"ids": []}', headers=bogus) as reply:  # fmt: skip
            assert reply.status == 200, await reply.text()


async def kourier(admin_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``kourier ARGS --admin-url ADMIN`` in a process, off the loop the worker runs on."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams.cli", *args, "--admin-url", admin_url],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def test_the_cli_prints_json_and_cancels_by_filter(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    sent = await schedule(client, "cli-bulk", 2)
    async with aiohttp.ClientSession() as http:
        await poll_until(
            lambda: scheduled_ids(http, admin_url, "Tally"), set(sent), 30, "scheduled sends"
        )
        filters = ("--service", "Tally", "--status", "scheduled")
        listed = await kourier(admin_url, "invocations", "list", *filters, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)["invocations"]
        assert {row["id"] for row in rows} == set(sent)
        assert all(row["due_at"] for row in rows)
        described = await kourier(admin_url, "invocations", "describe", sent[0], "--json")
        assert json.loads(described.stdout)["tree"] == {
            "callers": [], "callees": [], "truncated": False,
        }  # fmt: skip
        services = await kourier(admin_url, "services", "--json")
        assert "Tally" in {s["name"] for s in json.loads(services.stdout)}

        dry = await kourier(admin_url, "invocations", "cancel", *filters, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert set(json.loads(dry.stdout)["ids"]) == set(sent)
        assert await scheduled_ids(http, admin_url, "Tally") == set(sent), "a dry run did nothing"

        unasked = await kourier(admin_url, "invocations", "cancel", *filters)
        assert unasked.returncode == 2
        assert "pass --yes" in unasked.stderr
        assert await scheduled_ids(http, admin_url, "Tally") == set(sent)

        done = await kourier(admin_url, "invocations", "cancel", *filters, "--yes", "--json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert set(answer["results"]) == set(sent)
        assert answer["succeeded"] == 2
        for invocation_id in sent:
            await invocation_status(http, admin_url, invocation_id, "completed")
        none_left = await kourier(admin_url, "invocations", "cancel", *filters, "--yes", "--json")
        assert json.loads(none_left.stdout)["ids"] == [], "nothing left to cancel"
