"""The handler SDK's types as mypy --strict reads a handler: what a ``type_hint`` gives."""

from __future__ import annotations

from pathlib import Path

from mypy import api

HANDLER = """
from typing import Annotated

from handlers.context import ObjectContext, WorkflowSharedContext


async def handler(ctx: ObjectContext) -> None:
    reveal_type(await ctx.get("n", int))
    reveal_type(await ctx.get("n"))
    reveal_type(ctx.run("a", lambda: 1))
    reveal_type(ctx.run("a", lambda: 1, type_hint=None))
    reveal_type(ctx.run("a", lambda: 1, type_hint=str))
    reveal_type(await ctx.get("n", int | None))
    reveal_type(ctx.run("a", lambda: 1, type_hint=Annotated[int, "positive"]))


async def workflow_handler(ctx: WorkflowSharedContext) -> None:
    reveal_type(ctx.promise("p"))
    reveal_type(await ctx.promise("p", int).value())
    reveal_type(await ctx.promise("p", str).peek())
    reveal_type(ctx.promise("p", int | None))
"""


def test_a_type_hint_types_the_value_and_none_is_accepted(tmp_path: Path) -> None:
    """``get(name, int)`` was ``Any``, and ``promise(name, int)`` took no type;
    ``run(..., type_hint=None)``, and a type form that is not a class (``int | None``,
    ``Annotated``), which the runtime takes, matched no overload (an error under --strict)."""
    source = tmp_path / "handler.py"
    source.write_text(HANDLER)
    out, err, _code = api.run(["--strict", "--no-incremental", "--cache-dir=/dev/null",
                              str(source)])  # fmt: skip
    revealed = [line.split("Revealed type is ", 1)[1] for line in out.splitlines()
                if "Revealed type is" in line]  # fmt: skip
    assert revealed == [
        '"int | None"',
        '"Any"',
        '"handlers.context.DurableFuture[Any]"',
        '"handlers.context.DurableFuture[Any]"',
        '"handlers.context.DurableFuture[str]"',
        '"Any"',
        '"handlers.context.DurableFuture[Any]"',
        '"handlers.context.DurablePromise[Any]"',
        '"int"',
        '"str | None"',
        '"handlers.context.DurablePromise[Any]"',
    ], out + err
    assert "error" not in out, out
