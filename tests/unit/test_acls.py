"""``kourier acls``: the ACLs each role needs in a namespace (no broker; granting them on a
secured broker is ``tests/integration/test_acls.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from streams.cli.parser import main
from streams.kafka.acls import markdown, needed

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_one_kourier_acls_grants() -> None:
    text = README.read_text()
    header = markdown().splitlines()[0]
    rows = text[text.index(header) :].split("\n\n")[0]  # the table, to its blank line
    assert rows == markdown()


def test_one_principal_in_both_roles_gets_each_acl_once() -> None:
    both = needed("shop", {"worker": "User:shop", "client": "User:shop"})
    assert len(both) == len(set(both))
    worker = needed("shop", {"worker": "User:shop"})
    assert set(worker) < set(both)  # the client adds its group Describe


def test_each_role_gets_its_operations_on_the_namespace_names() -> None:
    client = needed("shop", {"client": "User:web"})
    assert {(a.resource, a.name, a.pattern, a.operation) for a in client} == {
        ("Topic", "shop.", "prefixed", "Read"),
        ("Topic", "shop.", "prefixed", "Describe"),
        ("Topic", "shop.ingress", "literal", "Write"),
        ("Group", "shop.", "prefixed", "Describe"),
    }
    worker = needed("shop", {"worker": "User:w"})
    assert {a.principal for a in worker} == {"User:w"}
    bindings = {(b.restype, b.name, b.resource_pattern_type, b.operation)
                for b in (a.binding() for a in worker)}  # fmt: skip
    assert (ResourceType.TOPIC, "shop.delay", ResourcePatternType.LITERAL,
            AclOperation.DELETE) in bindings  # fmt: skip
    assert (ResourceType.TRANSACTIONAL_ID, "shop.", ResourcePatternType.PREFIXED,
            AclOperation.WRITE) in bindings  # fmt: skip
    assert (ResourceType.GROUP, "shop.", ResourcePatternType.PREFIXED,
            AclOperation.READ) in bindings  # fmt: skip


def test_the_command_prints_them_without_apply_and_refuses_no_principal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["acls", "--namespace", "shop", "--client", "User:web", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["applied"] is False
    assert len(printed["acls"]) == 4
    assert main(["acls"]) == 2
    assert "--worker User:NAME" in capsys.readouterr().err
    assert main(["acls", "--worker", "web"]) == 2
    assert "write User:web" in capsys.readouterr().err


def test_slow_brokers_give_kafkas_timed_out_not_a_timeout_of_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait for each ACL was as long as librdkafka's request timeout, so it could end
    first with a bare ``TimeoutError``, which ``kourier acls --apply`` showed as a
    traceback: librdkafka's ``_TIMED_OUT``, a moment later, is a "try again"."""
    import threading
    from concurrent.futures import Future

    from confluent_kafka import KafkaError, KafkaException

    from streams.kafka import acls
    from streams.settings import Settings

    def answered_late(request_timeout: float) -> Future[None]:  # as librdkafka ends it
        future: Future[None] = Future()
        timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT, "request timed out"))
        threading.Timer(request_timeout + 0.2, future.set_exception, (timed_out,)).start()
        return future

    class SlowAdmin:
        def create_acls(self, bindings: list[object], request_timeout: float) -> dict[Any, Any]:
            return {binding: answered_late(request_timeout) for binding in bindings}

    monkeypatch.setattr(acls, "checked_admin", lambda settings: (SlowAdmin(), None))
    monkeypatch.setattr(acls, "cluster_metadata", lambda *args: None)
    wanted = needed("shop", {"client": "User:web"})[:1]
    with pytest.raises(KafkaException) as raised:
        acls.create_acls(Settings(namespace="shop"), wanted, timeout=0.3)
    assert raised.value.args[0].code() == KafkaError._TIMED_OUT
