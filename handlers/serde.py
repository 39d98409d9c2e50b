"""JSON in and out of handlers: pydantic-typed parameters (and state, promise and
``ctx.run`` values read with a type) are validated; results are written as pydantic
serializes their annotated type, not validated against it."""

from __future__ import annotations

import copy
import functools
import inspect
import json
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import PydanticUserError, TypeAdapter, ValidationError

from handlers.exceptions import TerminalError

_NO_TYPE = inspect.Parameter.empty


@dataclass(frozen=True)
class Serde:
    """Converts between JSON-compatible values and the Python type of a handler's signature."""

    annotation: Any = Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "_adapter", TypeAdapter(self.annotation))
        object.__setattr__(self, "_any", self.annotation in (Any, object))
        # A JSON scalar's type validates a decoded value as JSON mode would: no dumps.
        object.__setattr__(self, "_scalar", self.annotation in _SCALARS)

    @property
    def adapter(self) -> TypeAdapter[Any]:
        adapter: TypeAdapter[Any] = self.__dict__["_adapter"]
        return adapter

    def load(self, value: Any, what: str, status_code: int = 400) -> Any:
        """Validate a decoded JSON value. A value that does not fit fails the same way on
        every attempt, so it is a :class:`TerminalError`: the caller's mistake (400) by
        default, or ``status_code`` (500 for a value the handler stored itself).

        The value is validated as the JSON it was read from, in pydantic's JSON mode: what
        :meth:`dump` wrote comes back as it was (a strict model's ``datetime``, ``UUID`` or
        tuple, which in Python mode would refuse the string or list it was written as)."""
        if self.__dict__["_any"]:
            return value
        try:
            return self._validated(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            detail = f"{where}: {first['msg']}" if where else first["msg"]
            raise TerminalError(f"invalid {what}: {detail}", status_code=status_code) from None
        except PydanticUserError:  # a model not fully defined: the deployment's fault
            raise
        except (LookupError, TypeError, AttributeError, ArithmeticError, RecursionError) as exc:
            # pydantic wraps a validator's ValueError and AssertionError alone: its KeyError
            # on a field missing came through, and was retried as the handler's failure,
            # though the same value fails so on every attempt. Anything else (a network
            # error of a validator that looks something up, a MemoryError) may pass: retried.
            detail = f"{type(exc).__name__}: {exc}"
            raise TerminalError(f"invalid {what}: {detail}", status_code=status_code) from None
        except (SystemExit, KeyboardInterrupt) as exc:
            raise _contained(exc) from None

    def _validated(self, value: Any) -> Any:
        # A model's fields are read by alias or by name: :meth:`dump` writes names (what any
        # model reads back, one with a serialization alias alone too), and a caller may send
        # its aliases.
        if self.__dict__["_scalar"]:
            return self.adapter.validate_python(value)
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError, RecursionError):  # not JSON: validated as it is
            return self.adapter.validate_python(value, by_alias=True, by_name=True)
        try:
            return self.adapter.validate_json(text, by_alias=True, by_name=True)
        except ValidationError as error:
            if not _unparsed(error):
                raise
            # JSON pydantic's parser cannot read (nested past its 200 levels, where a record
            # may hold 254): validated as it is.
            return self.adapter.validate_python(value, by_alias=True, by_name=True)

    def dump(self, value: Any) -> Any:
        """A JSON-compatible value (pydantic models become dicts, their fields by name)."""
        if self.annotation is Any and type(value) in _AS_IS:  # as the serializer would
            return value
        # By name even where the model's config says otherwise (serialize_by_alias): a field
        # with an alias to be written by and none to be read by reads back its name alone.
        return self.adapter.dump_python(value, mode="json", by_alias=False)

    def encode(self, value: Any, what: str) -> Any:
        """:meth:`dump`, where a value that is not JSON is the caller's mistake (400)."""
        try:
            return self.dump(value)
        except (ValueError, TypeError) as exc:
            raise TerminalError(f"{what} is not JSON: {exc}", status_code=400) from None


def _contained(exc: BaseException) -> RuntimeError:
    """A validator's ``sys.exit()``, as an error the attempt fails with: in a task (a
    ctx.run's, a select's branch), asyncio ends the event loop with it, and with the loop
    the worker, and every next owner of the partition after it. (pydantic wraps what a
    serializer raises in a ``PydanticSerializationError``.)"""
    return RuntimeError(f"a validator raised {exc!r}")


#: Types whose values validate the same in pydantic's Python and JSON modes.
_SCALARS = (int, float, str, bool, type(None))

JSON = Serde(Any)


def _unparsed(error: ValidationError) -> bool:
    """Whether pydantic's JSON parser could not read what ``json.dumps`` wrote: nested
    deeper than it goes, or a string with a lone surrogate (which Python mode takes)."""
    return any(e["type"] == "json_invalid" for e in error.errors())


#: Exactly these types are their own JSON, unchanged by ``Serde(Any).dump`` (not their
#: subclasses: enums, for one; a typed serde may convert them: an int to a float).
_AS_IS = frozenset({int, str, bool, type(None)})


@dataclass(frozen=True)
class Signature:
    """What a handler takes and returns, read from its annotations."""

    takes_input: bool
    input: Serde
    output: Serde
    #: The input parameter's default (``inspect.Parameter.empty`` for none), which a call
    #: without an argument (``null``) gets a copy of (:meth:`default_input`).
    default: Any = inspect.Parameter.empty

    @property
    def input_default(self) -> bool:
        return self.default is not inspect.Parameter.empty

    def default_input(self) -> Any:
        """A copy of the input's default, each call its own: one that a handler changes
        (``items: list = []``) would otherwise reach the next call, and a replay, changed."""
        return copy.deepcopy(self.default)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _annotated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What carries ``fn``'s annotations: itself (a function, or an object
    ``functools.update_wrapper`` gave them to), or else its class's ``__call__`` (an
    instance's own ``__annotations__`` are its class's attributes, not the call's)."""
    while isinstance(fn, functools.partial):  # its hints are its function's, by name
        fn = fn.func
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's, not the object's
    if inspect.isroutine(fn) or hasattr(fn, "__wrapped__") or not inspect.isfunction(call):
        return fn
    return call


def parameters_of(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """The positional parameters a handler is called with, ``(ctx)`` or ``(ctx, input)``
    (through ``functools.wraps``); a ``TypeError`` for any other shape, which would fail on
    every attempt: ``*args``, a keyword-only parameter without a default, none or three."""
    every = list(inspect.signature(fn).parameters.values())
    params = [p for p in every if p.kind in _POSITIONAL]
    needed = [p for p in every if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    variadic = any(p.kind == p.VAR_POSITIONAL for p in every)
    if not 1 <= len(params) <= 2 or needed or variadic:
        shown = ", ".join(str(p) for p in every)
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(f"handler {name} must take (ctx) or (ctx, input), not ({shown})")
    return params


def _hints(fn: Callable[..., Any], needed: list[str]) -> dict[str, Any]:
    """``fn``'s type hints, with ``Annotated`` kept (``Annotated[int, Field(gt=0)]``). When
    one does not resolve (the context's type imported for type checking only, under
    ``from __future__ import annotations``), those ``needed`` are resolved one by one, and
    only theirs raise ``NameError``."""
    try:
        return get_type_hints(fn, include_extras=True)
    except NameError:
        annotations = getattr(fn, "__annotations__", {})
        hints: dict[str, Any] = {}
        for name in needed:
            if name in annotations:  # in the module of what it wraps, as get_type_hints
                where = getattr(inspect.unwrap(fn), "__globals__", {})
                probe = types.FunctionType(_probe.__code__, where)
                probe.__annotations__ = {name: annotations[name]}
                hints.update(get_type_hints(probe, include_extras=True))
        return hints


def _probe() -> None: ...


def signature_of(fn: Callable[..., Any]) -> Signature:
    params = parameters_of(fn)
    needed = [params[1].name, "return"] if len(params) == 2 else ["return"]
    hints = _hints(_annotated(fn), needed)
    takes_input = len(params) == 2
    input_type = hints.get(params[1].name, Any) if takes_input else Any
    output_type = hints.get("return", Any)
    return Signature(
        takes_input=takes_input,
        input=Serde(input_type),
        output=Serde(output_type),
        default=params[1].default if takes_input else inspect.Parameter.empty,
    )
