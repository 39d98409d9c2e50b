"""The README's demo: a real broker, a worker, the HTTP ingress, and Kourier at work.

Run it with ``deploy/demo.sh``. Everything it starts is stopped by PID at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from streams.kafka import broker
from streams.kafka.admin import create_topics
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read() or b"null"), dict(reply.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null"), dict(error.headers)


def show(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
    shown = f" --json '{json.dumps(body)}'" if body is not None else ""
    shown += "".join(f" -H '{name}: {value}'" for name, value in (headers or {}).items())
    print(f"$ curl -X {method} {url}{shown}")
    status, value, headers = http(method, url, body, headers)
    extra = f"  (x-restate-id: {headers['x-restate-id']})" if "x-restate-id" in headers else ""
    print(f"  {status} {json.dumps(value)}{extra}")
    return value


def wait_for_services(url: str, services: set[str], seconds: float) -> None:
    """Wait until the ingress answers and knows ``services`` (workers announce them)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            status, health, _ = http("GET", url)
            if status == 200 and services <= set(health["services"]):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not list {sorted(services)} within {seconds}s")


#: Signals that end the demo as Ctrl-C does, through the ``finally`` that stops what it
#: started (Python's default for them ends the process at once: the broker, in a session
#: of its own, and the worker and ingress would go on running).
ENDING = (signal.SIGTERM, signal.SIGHUP)
#: The signal that ended the demo, if one did.
ENDED_BY: list[int] = []


def _end(signum: int, _frame: object) -> None:
    for ending in ENDING:  # a second one must not cut the clean-up short
        signal.signal(ending, signal.SIG_IGN)
    ENDED_BY.append(signum)
    raise SystemExit(128 + signum)


def run() -> int:
    """``main()``'s exit code; 128 + the signal's number when one ended it, whatever the
    exception its ``SystemExit`` became (raised inside a C extension's call, confluent-kafka
    turned it into a ``TypeError``)."""
    try:
        return main()
    except BaseException:
        if not ENDED_BY:
            raise
        return 128 + ENDED_BY[0]


def main() -> int:
    for ending in ENDING:
        signal.signal(ending, _end)
    work = Path(tempfile.mkdtemp(prefix="kourier-demo-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        step("starting a genuine Apache Kafka broker (KRaft) from deploy/kafka")
        running = broker.start(work / "kafka", port=0)
        print(f"broker pid {running.pid} at {running.bootstrap}", flush=True)
        settings = Settings(bootstrap_servers=running.bootstrap, namespace="demo")
        step("kourier topics create")
        for state in create_topics(settings):
            print(f"  {state.spec.name:<18} {state.partitions} partitions  {state.spec.purpose}")

        step("starting `kourier worker examples.quickstart` and `kourier ingress`")
        # The user's own KOURIER_* settings (a token, SASL) are for their cluster, not this
        # loopback broker: the demo's HTTP calls send no token.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("KOURIER_") or k == "KOURIER_CACHE"}  # fmt: skip
        env.update(KOURIER_BOOTSTRAP_SERVERS=running.bootstrap, KOURIER_NAMESPACE="demo",
                   PYTHONPATH=str(ROOT))  # fmt: skip
        port, admin = broker.free_port(), broker.free_port()
        for name, args in (
            ("worker", ["worker", "examples.quickstart"]),
            ("ingress", ["ingress", "--port", str(port), "--admin-port", str(admin)]),
        ):
            log = (work / f"{name}.log").open("wb")
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
            print(f"  {name} pid {processes[-1].pid}, log {work / f'{name}.log'}")
        base = f"http://127.0.0.1:{port}"
        admin_url = f"http://127.0.0.1:{admin}"
        wait_for_services(f"{base}/health", {"Greeter", "Counter", "Bank", "Booking"}, 60)

        step("request-response: a service, then an object's exclusive and shared handlers")
        show("POST", f"{base}/Greeter/greet", "Ada")
        show("POST", f"{base}/Counter/ada/add", 5)
        show("POST", f"{base}/restate/call/Counter/ada/add", 2)
        show("POST", f"{base}/Counter/ada/get")

        step("one-way sends: 202 at once, applied once each, in order per key")
        for _ in range(3):
            show("POST", f"{base}/Counter/bob/add/send", 10)
        deadline = time.monotonic() + 30
        while http("POST", f"{base}/Counter/bob/get")[1] != 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        show("POST", f"{base}/Counter/bob/get")

        step("a delayed send: queued on the delay topic, released when due (here 2 s)")
        sent = time.monotonic()
        show("POST", f"{base}/Counter/carol/add/send?delay=2s", 1)
        show("POST", f"{base}/Counter/carol/get")
        deadline = time.monotonic() + 30
        while http("POST", f"{base}/Counter/carol/get")[1] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"  ... applied {time.monotonic() - sent:.1f} s after it was sent")
        show("POST", f"{base}/Counter/carol/get")

        step("an idempotent retry: the same idempotency key, the same invocation, run once")
        for _ in range(2):
            show("POST", f"{base}/Counter/dave/add", 50, {"idempotency-key": "order-17"})
        show("POST", f"{base}/Counter/dave/get")

        step("attach: an idempotent invocation's outcome stays retrievable by its id")
        _, _, headers = http(
            "POST", f"{base}/Counter/dave/add", 50, {"idempotency-key": "order-17"}
        )
        show("GET", f"{base}/restate/attach/{headers['x-restate-id']}")

        step("cancel: a running hold is cancelled; its handler compensates in `except`")
        receipt = show("POST", f"{base}/Booking/seat-7/hold/send", 600)
        seat = receipt["invocationId"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            detail = http("GET", f"{admin_url}/invocations/{seat}")[1]
            if isinstance(detail, dict) and detail.get("waiting_on"):
                break
            time.sleep(0.1)
        show("GET", f"{admin_url}/invocations?service=Booking")
        show("PATCH", f"{admin_url}/invocations/{seat}/cancel")
        while http("POST", f"{base}/Booking/seat-7/status")[1] != "released":
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        show("POST", f"{base}/Booking/seat-7/status")

        step("a workflow: run once per id, a durable promise resolved by another handler")
        show("POST", f"{base}/Signup/ada/run/send", "ada@example.com")
        show("POST", f"{base}/Signup/ada/run/send", "ada@example.com")
        show("POST", f"{base}/Signup/ada/click", "ok")
        show("GET", f"{base}/restate/workflow/Signup/ada/attach")

        step("a chain of calls: Bank/transfer calls Counter/add on two keys")
        show("POST", f"{base}/Bank/transfer", {"source": "bob", "target": "ada", "amount": 4})

        step("errors keep their status codes")
        show("POST", f"{base}/Greeter/greet", "")
        show("POST", f"{base}/Nope/greet", "x")

        step("the Kafka way in: kcat writes the ingress topic, reads the response topic")
        kcat = shutil.which("kcat")
        if kcat is None:
            print("kcat is not installed (deploy/setup.sh installs it)", file=sys.stderr)
            return 1
        record = json.dumps({"v": 1, "kind": "invoke",
                             "target": {"service": "Counter", "key": "ada", "handler": "add"},
                             "argument": 100, "request_id": "demo-kcat"})  # fmt: skip
        print(f"$ echo '{record}' | kcat -P -b {running.bootstrap} -t demo.ingress -k ada")
        subprocess.run([kcat, "-P", "-b", running.bootstrap, "-t", "demo.ingress", "-k", "ada"],
                       input=record.encode(), check=True, timeout=30)  # fmt: skip
        reader = [kcat, "-C", "-b", running.bootstrap, "-t", "demo.responses", "-o", "beginning",
                  "-X", "isolation.level=read_committed", "-e", "-q"]  # fmt: skip
        print(f"$ kcat {' '.join(reader[1:])} | grep demo-kcat")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = max(1.0, deadline - time.monotonic())
            read = subprocess.run(reader, capture_output=True, check=True, timeout=left)
            found = [line for line in read.stdout.splitlines() if b'"demo-kcat"' in line]
            if found:
                print(f"  {found[0].decode()}")
                break
            time.sleep(0.2)
        else:
            print("  no response within 30 s", file=sys.stderr)
            return 1
        return 0
    finally:
        # One now (a terminal closing, a second Ctrl-C) must not cut the clean-up short:
        # the broker runs in a session of its own, which no terminal signal reaches.
        for ending in (*ENDING, signal.SIGINT):
            signal.signal(ending, signal.SIG_IGN)
        step("stopping the ingress, the worker and the broker (by PID)")
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        broker.stop(work / "kafka")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run())
