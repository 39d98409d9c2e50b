"""A handler owns the values it is given: changing them in place changes neither the
object's state, nor the journal, nor the stored argument that a replay starts from."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator
from pydantic.alias_generators import to_camel

from handlers import Context, ObjectContext, Service, VirtualObject
from handlers.serde import Serde
from streams import testing
from streams.wire.records import Target
from tests.unit.harness import Harness, until

bag = VirtualObject("Bag")


@bag.handler()
async def fill(ctx: ObjectContext, items: list[str]) -> None:
    ctx.set("items", items)


@bag.handler()
async def spoil_what_get_gave(ctx: ObjectContext) -> list[str]:
    items: list[str] = await ctx.get("items")
    items.append("spoiled")
    again: list[str] = await ctx.get("items")
    return again


@bag.handler()
async def contents(ctx: ObjectContext) -> list[str]:
    items: list[str] = await ctx.get("items")
    return items


tools = Service("Tools")


@tools.handler()
async def spoil_argument(ctx: Context, items: Any) -> Any:
    items.append("spoiled")  # untyped: a typed input is validated into a new list anyway
    await ctx.sleep(timedelta(milliseconds=200))
    return items


@tools.handler()
async def spoil_what_run_gave(ctx: Context) -> dict[str, list[int]]:
    made: dict[str, list[int]] = await ctx.run("make", lambda: {"n": [1]})
    made["n"].append(2)
    await ctx.sleep(timedelta(milliseconds=200))
    return made


def on(handler: str, key: str | None = "b") -> Target:
    service = "Bag" if key is not None else "Tools"
    return Target(service=service, key=key, handler=handler)


async def test_changing_what_get_returned_changes_neither_state_nor_journal() -> None:
    h = Harness([bag])
    h.call(on("fill"), ["a"], request_id="fill")
    spoiler = h.call(on("spoil_what_get_gave"), request_id="spoil")
    h.call(on("contents"), request_id="contents")
    await until(lambda: "contents" in h.responses())
    responses = h.responses()
    assert responses["spoil"].value == ["a"], "the second get saw the first one's change"
    assert responses["contents"].value == ["a"], "the state changed without a set"
    written = [o for o in h.out if o.key is not None and spoiler in o.key.decode()]
    assert all(b"spoiled" not in (o.value or b"") for o in written), "the journal changed"


async def test_changing_the_argument_leaves_the_stored_one_alone() -> None:
    h = Harness([tools])
    inv = h.processor.invocations[h.call(on("spoil_argument", key=None), ["a"], request_id="spoil")]
    await until(lambda: bool(inv.journal) and inv.journal[-1].kind == "sleep")
    assert inv.meta.argument == ["a"], "the argument a replay starts from changed"
    await until(lambda: "spoil" in h.responses())
    assert h.responses()["spoil"].value == ["a", "spoiled"]


async def test_changing_a_run_result_leaves_its_journal_entry_alone() -> None:
    h = Harness([tools])
    inv = h.processor.invocations[h.call(on("spoil_what_run_gave", key=None), request_id="spoil")]
    await until(lambda: bool(inv.journal) and inv.journal[-1].kind == "sleep")
    assert inv.journal[0].value == {"n": [1]}, "the journaled result a replay returns changed"
    await until(lambda: "spoil" in h.responses())
    assert h.responses()["spoil"].value == {"n": [1, 2]}


@tools.handler()
async def deep_result(ctx: Context, depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return {"value": value}  # one level more than the list


async def test_a_result_too_deep_for_a_record_fails_the_call_with_400() -> None:
    """A result that pydantic could serialize alone, but not inside a response record (one
    level down), failed the record in the engine: the attempt died with the error, and
    the caller waited for ever."""
    h = Harness([tools])
    h.call(on("deep_result", key=None), 253, request_id="fits")
    h.call(on("deep_result", key=None), 254, request_id="too-deep")
    await until(lambda: {"fits", "too-deep"} <= h.responses().keys())
    responses = h.responses()
    assert responses["fits"].failure is None
    failure = responses["too-deep"].failure
    assert failure is not None
    assert failure.code == 400
    assert "the result of Tools/deep_result is not JSON" in failure.message


class Profile(BaseModel):
    """A model whose fields have aliases (camelCase)."""

    model_config = ConfigDict(alias_generator=to_camel)

    user_name: str


class Shown(BaseModel):
    """A model whose field has an alias to be written by, and none to be read by."""

    user_name: str = Field(serialization_alias="userName")


profiles = VirtualObject("Profiles")


@profiles.handler()
async def keep(ctx: ObjectContext, profile: Profile) -> Profile:
    ctx.set("profile", profile)
    kept: Profile | None = await ctx.get("profile", Profile)
    assert kept is not None
    return kept


@tools.handler()
async def save_profile(ctx: Context, name: str) -> Any:
    return await ctx.object(keep, "p").request(Profile.model_validate({"userName": name}))


async def test_a_model_with_aliases_goes_from_handler_to_handler_and_to_state() -> None:
    """A model was written by its field names and read by its aliases: a call with one
    failed with 400 in the callee (``userName: Field required``), and a state value of one
    with 500 when read back."""
    async with testing.Harness([profiles, tools]) as h:
        assert await h.call(save_profile, "ada") == {"user_name": "ada"}
        assert h.state("Profiles", "p") == {"profile": {"user_name": "ada"}}
        by_alias = await h.call(keep, {"userName": "bob"}, key="q")
        assert by_alias == {"user_name": "bob"}, "read by its alias too"


class ShownByConfig(Shown):
    """The same, written by its alias by default (pydantic 2.11's ``serialize_by_alias``)."""

    model_config = ConfigDict(serialize_by_alias=True)


@pytest.mark.parametrize("model", [Shown, ShownByConfig])
def test_a_model_with_a_serialization_alias_alone_reads_back_what_was_written(
    model: type[Shown],
) -> None:
    """Written by its alias (by Kourier, or by the model's config), such a model did not
    read back: it has no alias to be read by ("user_name: Field required")."""
    serde = Serde(model)
    written = serde.dump(model(user_name="ada"))
    assert serde.load(written, "state") == model(user_name="ada")


@tools.handler()
async def greet(ctx: Context, name: str = "world") -> str:
    return f"hello {name}"


async def test_a_call_without_an_argument_gets_the_input_s_default() -> None:
    """The default was never used: a call without a body passed ``None``, which ``str``
    refused with 400 on every call, though the handler registered."""
    async with testing.Harness([tools]) as h:
        assert await h.call(greet) == "hello world"
        assert await h.call(greet, "ada") == "hello ada"


@tools.handler()
async def tag(ctx: Context, tags: list[str] = []) -> list[str]:  # noqa: B006 - the point
    tags.append("seen")
    return tags


async def test_each_call_without_an_argument_gets_a_default_of_its_own() -> None:
    """Python's default object was shared: a handler that changed it (``tags.append``)
    handed the change to every later call, and to a replay of this one."""
    async with testing.Harness([tools]) as h:
        assert await h.call(tag) == ["seen"]
        assert await h.call(tag) == ["seen"], "the first call's change reached the second"


class Order(BaseModel):
    sku: str

    @model_validator(mode="before")
    @classmethod
    def upper(cls, data: Any) -> Any:
        data["sku"] = data["sku"].upper()  # KeyError without one, TypeError for a list
        return data


placed = {"count": 0}


@tools.handler()
async def place(ctx: Context, order: Order) -> str:
    placed["count"] += 1
    return order.sku


@pytest.mark.parametrize("argument", [{}, [1]])
async def test_an_input_a_validator_fails_on_with_no_value_error_is_a_400(argument: Any) -> None:
    """pydantic wraps a validator's ValueError alone: its KeyError or TypeError came
    through, was taken for the handler's failure, and retried until the invocation was
    paused, its caller never answered (the same input fails on every attempt)."""
    h = Harness([tools])
    h.call(on("place", None), argument, request_id="bad")
    h.call(on("place", None), {"sku": "ab"}, request_id="good")
    await until(lambda: {"bad", "good"} <= set(h.responses()))
    failure = h.responses()["bad"].failure
    assert failure is not None
    assert failure.code == 400
    assert failure.message.startswith("invalid input: ")
    assert h.responses()["good"].value == "AB"


class Unreachable(Exception):
    """As an HTTP library's connection error is: no OSError."""


class Priced(BaseModel):
    sku: str

    @model_validator(mode="before")
    @classmethod
    def look_up(cls, data: Any) -> Any:
        raise FAILURE[0]


FAILURE: list[Exception] = []


@pytest.mark.parametrize("error", [ConnectionError("down"), Unreachable("down")])
def test_a_validator_s_network_error_is_retried_not_the_caller_s_400(error: Exception) -> None:
    """A validator's KeyError or TypeError is the value's fault, the same on every attempt;
    a network error, an OSError or an HTTP library's own, may pass: it is retried."""
    FAILURE[:] = [error]
    with pytest.raises(type(error)):
        Serde(Priced).load({"sku": "a"}, "input")


class Quitter(BaseModel):
    n: int

    @model_validator(mode="before")
    @classmethod
    def quit(cls, data: Any) -> Any:
        sys.exit(3)

    @field_serializer("n")
    def leave(self, n: int) -> int:
        sys.exit(4)


def test_a_validator_that_exits_fails_the_attempt_not_the_worker() -> None:
    """Raised in a ctx.run's task (validating its ``type_hint``), ``SystemExit`` ended the
    event loop: the worker, and every next owner of the partition."""
    with pytest.raises(RuntimeError, match="SystemExit"):
        Serde(Quitter).load({"n": 1}, "result of ctx.run('x')")
    with pytest.raises(ValueError, match="SystemExit"):  # pydantic's own wrapping
        Serde(Quitter).dump(Quitter.model_construct(n=1))
