from __future__ import annotations

import ast
import functools
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

import handlers
from handlers import RetryPolicy, Service, TerminalError, VirtualObject, Workflow
from handlers.context import Context, ObjectContext, ObjectSharedContext, WorkflowContext
from handlers.serde import Serde
from handlers.service import handler_of

ROOT = Path(__file__).resolve().parents[2]


def test_public_names_are_pinned() -> None:
    assert sorted(handlers.__all__) == sorted([
        "CallFuture", "Callee", "Context", "DurableFuture", "DurablePromise", "HandlerDef",
        "NonDeterminismError", "ObjectContext", "ObjectSharedContext", "Recipient", "Request",
        "RetryPolicy", "SendHandle", "Service", "ServiceDefinition", "TerminalError",
        "VirtualObject", "Workflow", "WorkflowContext", "WorkflowSharedContext", "gather",
        "select",
    ])  # fmt: skip


def test_importing_handlers_pulls_in_no_kafka_and_no_runtime() -> None:
    code = (
        "import sys, handlers; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('confluent_kafka', 'faust', 'aiokafka', 'streams')); "
        "print(','.join(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_no_handlers_module_imports_kafka_or_streams() -> None:
    forbidden = {"confluent_kafka", "faust", "aiokafka", "streams", "mode"}
    for path in (ROOT / "handlers").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & forbidden, f"{path} imports {names}"


class Order(BaseModel):
    item: str
    quantity: int


def test_decorators_record_handlers_and_their_kinds() -> None:
    shop = VirtualObject("Shop")

    @shop.handler()
    async def buy(ctx: ObjectContext, order: Order) -> int:
        return order.quantity

    @shop.handler(kind="shared")
    async def peek(ctx: ObjectSharedContext) -> list[str]:
        return []

    assert set(shop.handlers) == {"buy", "peek"}
    assert shop.handlers["buy"].exclusive
    assert not shop.handlers["peek"].exclusive
    assert handler_of(buy) is shop.handlers["buy"]
    sig = shop.handlers["buy"].signature
    assert sig.takes_input
    assert sig.input.load({"item": "tea", "quantity": 2}, "input") == Order(item="tea", quantity=2)
    assert not shop.handlers["peek"].signature.takes_input
    assert shop.keyed


def test_bad_input_is_a_terminal_400() -> None:
    svc = Service("Svc")

    @svc.handler()
    async def take(ctx: Context, order: Order) -> None:
        return None

    with pytest.raises(TerminalError) as failure:
        svc.handlers["take"].signature.input.load({"item": "tea"}, "input")
    assert failure.value.status_code == 400
    assert "quantity" in failure.value.message


def test_duplicate_and_invalid_names_are_rejected() -> None:
    svc = Service("Svc")

    @svc.handler()
    async def one(ctx: Context) -> None: ...

    with pytest.raises(ValueError, match="already has a handler"):
        svc.handler("one")(one)
    with pytest.raises(ValueError, match="identifier"):
        Service("not valid")


def test_workflow_has_one_run_and_shared_handlers() -> None:
    flow = Workflow("Signup", idempotency_retention=timedelta(hours=1))

    @flow.main()
    async def run(ctx: WorkflowContext, email: str) -> bool:
        return True

    @flow.handler()
    async def click(ctx: WorkflowContext, secret: str) -> None: ...

    assert flow.run_handler is flow.handlers["run"]
    assert flow.handlers["run"].exclusive
    assert flow.handlers["click"].kind == "shared"


def test_retry_policy_backs_off_exponentially_up_to_a_cap() -> None:
    policy = RetryPolicy(max_attempts=5)
    assert policy.delay(1) == timedelta(milliseconds=50)
    assert policy.delay(2) == timedelta(milliseconds=100)
    assert policy.delay(30) == timedelta(seconds=60)
    assert not policy.exhausted(4)
    assert policy.exhausted(5)
    with pytest.raises(ValueError, match="factor"):
        RetryPolicy(factor=0.5)


def test_a_retry_policy_refuses_a_factor_that_is_not_a_number_and_a_cap_of_zero() -> None:
    """``factor=nan`` was taken (``nan < 1`` is False): the back-off raised at the second
    attempt, inside the attempt's ``except``, and left the invocation running with no task
    and its key locked."""
    with pytest.raises(ValueError, match="finite factor"):
        RetryPolicy(factor=float("nan"))
    with pytest.raises(ValueError, match="finite factor"):
        RetryPolicy(factor=float("inf"))
    with pytest.raises(ValueError, match="max_interval"):
        RetryPolicy(max_interval=timedelta(0))
    assert RetryPolicy(max_interval=timedelta.max).delay(60) <= timedelta.max


def test_terminal_error_keeps_code_and_message() -> None:
    error = TerminalError("nope", status_code=404)
    assert (error.message, error.status_code) == ("nope", 404)
    assert TerminalError("gone", HTTPStatus.NOT_FOUND).status_code == 404
    assert type(TerminalError("gone", HTTPStatus.NOT_FOUND).status_code) is int
    for code in (200, 302, 600, True, 404.0, "404", HTTPStatus.FOUND):
        error = TerminalError("bad", status_code=code)  # type: ignore[arg-type]
        assert error.status_code == 500
        assert error.message == f"bad (status_code {code!r} is not 400-599: sent as 500)"


def test_a_name_a_call_record_cannot_carry_is_refused() -> None:
    """``Service("Café")`` registered, then every call to it was refused as a bad target."""
    for bad in ("Café", "s" * 201, "not valid", "my-service"):
        with pytest.raises(ValueError, match="identifier in ASCII"):
            Service(bad)
    svc = Service("S" * 200)  # the longest a target takes

    async def grüß(ctx: Context) -> None: ...

    with pytest.raises(ValueError, match="identifier in ASCII"):
        svc.handler()(grüß)


def test_a_handler_that_is_not_async_or_takes_keywords_is_refused() -> None:
    """Each was accepted, then failed with ``TypeError`` on every attempt until paused
    (and a plain function repeated its side effects on each)."""
    svc = Service("Svc")

    def plain(ctx: Context) -> None: ...

    async def keyword_only(ctx: Context, *, order: Order) -> None: ...

    async def variadic(ctx: Context, *args: int) -> None: ...

    async def three(ctx: Context, a: int, b: int) -> None: ...

    with pytest.raises(TypeError, match="must be an async function"):
        svc.handler()(plain)  # type: ignore[type-var]
    for fn in (keyword_only, variadic, three):
        with pytest.raises(TypeError, match=r"must take \(ctx\) or \(ctx, input\)"):
            svc.handler()(fn)
    assert not svc.handlers


def test_an_object_handler_kind_is_exclusive_or_shared() -> None:
    """``kind="Shared"`` ran as shared; ``kind="workflow"`` made a once-per-key run."""
    shop = VirtualObject("Shop")
    for kind in ("Shared", "workflow"):
        with pytest.raises(ValueError, match="'exclusive' or 'shared'"):
            shop.handler(kind=kind)  # type: ignore[arg-type]


def test_a_retention_below_zero_is_refused() -> None:
    for option in ("idempotency_retention", "completed_retention", "inactivity_timeout"):
        with pytest.raises(ValueError, match=option):
            Service("Svc", **{option: timedelta(seconds=-1)})  # type: ignore[arg-type]


def test_a_workflow_without_a_main_handler_is_refused_where_it_is_registered() -> None:
    from streams.engine.registry import Registry, RegistryError

    flow = Workflow("Headless")

    @flow.handler()
    async def click(ctx: WorkflowContext) -> None: ...

    with pytest.raises(RegistryError, match="no main handler"):
        Registry([flow])


def test_annotated_constraints_on_an_input_are_kept() -> None:
    """``get_type_hints`` without ``include_extras`` dropped them: -5 was taken."""
    svc = Service("Svc")

    @svc.handler()
    async def take(ctx: Context, n: Annotated[int, Field(gt=0)]) -> None: ...

    with pytest.raises(TerminalError, match="greater than 0") as failure:
        svc.handlers["take"].signature.input.load(-5, "input")
    assert failure.value.status_code == 400
    assert svc.handlers["take"].signature.input.load(5, "input") == 5


class Stamped(BaseModel):
    model_config = ConfigDict(strict=True)
    at: datetime
    span: tuple[int, int]
    ref: uuid.UUID


def test_a_strict_models_value_comes_back_from_the_json_it_was_written_as() -> None:
    """Validated in Python mode, the ISO string, list and UUID string were refused: a
    strict model was a 400 as an input, and a 500 when read back from state."""
    serde = Serde(Stamped)
    value = Stamped(at=datetime(2026, 12, 6, 20, 0), span=(1, 2), ref=uuid.UUID(int=7))
    assert serde.load(serde.dump(value), "input") == value


def test_wrapped_and_callable_async_handlers_are_taken() -> None:
    """A ``functools.wraps`` decorator whose wrapper is a plain function returning the
    coroutine, an object with ``async def __call__``, and a keyword-only parameter with a
    default are handlers still."""
    svc = Service("Wrapped")

    def traced(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    @svc.handler()
    @traced
    async def greet(ctx: Context, name: str) -> str:
        return name

    class Counted:
        """A class-based decorator."""

        def __init__(self, fn: Any) -> None:
            functools.update_wrapper(self, fn)
            self.fn = fn

        async def __call__(self, *args: Any) -> Any:
            return await self.fn(*args)

    async def hello(ctx: Context) -> str:
        return "hi"

    async def optional(ctx: Context, order: Order, *, note: str = "") -> None: ...

    svc.handler()(Counted(hello))
    svc.handler()(optional)
    assert svc.handlers["greet"].signature.takes_input
    assert not svc.handlers["hello"].signature.takes_input
    assert svc.handlers["optional"].signature.input.annotation is Order


def test_an_object_with_async_call_is_read_by_its_call_s_annotations() -> None:
    """``get_type_hints`` of the object raised TypeError at the worker's start, or, for a
    class with annotated attributes, read those: its input came as a dict, not an Order."""
    svc = Service("Callable")

    class Charge:
        fee: int = 1  # an annotated attribute, which is not the call's

        async def __call__(self, ctx: Context, order: Order) -> str:
            return "charged"

    async def charge(ctx: Context, order: Order, fee: int) -> str:
        return "charged"

    svc.handler("charge")(Charge())
    svc.handler("partial")(functools.partial(charge, fee=1))  # typed by its function
    for name in ("charge", "partial"):
        signature = svc.handlers[name].signature
        assert (signature.input.annotation, signature.output.annotation) == (Order, str), name
    with pytest.raises(TypeError, match="name its handler"):
        svc.handler()(Charge())


def test_an_input_nested_deeper_than_the_json_parser_goes_is_still_validated() -> None:
    """A record may hold 254 levels; pydantic's JSON parser stops at 200."""
    deep: Any = 1
    for _ in range(230):
        deep = [deep]
    assert Serde(list[Any]).load(deep, "input") == deep


MODULE_TYPED_FOR_CHECKING_ONLY = """
from __future__ import annotations

from typing import TYPE_CHECKING

from handlers import Service

if TYPE_CHECKING:
    from handlers import Context

svc = Service("Checked")


@svc.handler()
async def double(ctx: Context, n: int) -> int:
    return n * 2
"""


def test_a_context_type_imported_for_type_checking_only_is_not_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolving every annotation raised ``NameError`` for the context's, which Kourier
    never uses, and the worker ended at its start."""
    (tmp_path / "checked_only.py").write_text(MODULE_TYPED_FOR_CHECKING_ONLY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__("checked_only")
    signature = module.svc.handlers["double"].signature
    assert signature.input.load(4, "input") == 4
    with pytest.raises(TerminalError):
        signature.input.load("four", "input")
    assert signature.output.annotation is int
