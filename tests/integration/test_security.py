"""Security: the bearer token on the ingress and admin API; secrets stay out of logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from streams.kafka.broker import free_port
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration.conftest import ROOT
from tests.processes import stop_process

TOKEN = "t0ken-that-must-not-leak"
PASSWORD = "sasl-password-that-must-not-leak"


async def test_token_is_required_and_secrets_never_logged(
    topics: Settings, worker: Worker, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        KOURIER_BOOTSTRAP_SERVERS=topics.bootstrap_servers,
        KOURIER_NAMESPACE=topics.namespace,
        KOURIER_TOKEN=TOKEN,
        KOURIER_KAFKA_SASL_PASSWORD=PASSWORD,  # passed through; unused on a plaintext listener
    )
    log_path = tmp_path / "ingress.log"

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "ingress", "--port", str(port),
                 "--admin-port", str(admin)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    process = await asyncio.to_thread(start)
    try:
        async with aiohttp.ClientSession() as http:
            base, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
            for _ in range(300):
                try:
                    async with http.get(f"{base}/health") as reply:
                        if reply.status == 200 and "Relay" in (await reply.json())["services"]:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("ingress never became healthy: " + log_path.read_text())
            good = {"authorization": f"Bearer {TOKEN}"}
            for url in (f"{base}/Relay/echo", f"{admin_url}/invocations"):
                method = http.post if url.endswith("echo") else http.get
                async with method(url, json=1) as reply:
                    assert reply.status == 401, url
                    assert (await reply.json())["code"] == 401
                async with method(url, json=1, headers={"authorization": "Bearer wrong"}) as r:
                    assert r.status == 401
                async with method(url, json=1, headers=good) as reply:
                    assert reply.status == 200, url
            async with http.get(f"{admin_url}/ui") as reply:
                assert reply.status == 200, "the UI page is static; it asks for the token"
            # The CLI sends KOURIER_TOKEN.
            listed = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "streams.cli", "invocations", "list", "--admin-url",
                 admin_url],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stdout + listed.stderr
    finally:
        await asyncio.to_thread(stop_process, process)
    logged = await asyncio.to_thread(log_path.read_text)
    assert "settings:" in logged, "the ingress logs its (redacted) settings"
    assert TOKEN not in logged
    assert PASSWORD not in logged
