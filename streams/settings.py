"""One typed settings object, read from ``KOURIER_*`` environment variables and CLI flags."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from handlers.retry import RetryPolicy
from streams.errors import KourierError
from streams.wire.headers import DENIED_HEADERS

_NAMESPACE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_KAFKA_PREFIX = "KOURIER_KAFKA_"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")
#: A librdkafka configuration value.
ClientValue = str | int | float | bool
# Client properties whose values must never be printed or logged: any whose name holds one
# of SECRET_WORDS (sasl.password, sasl.oauthbearer.client.secret, a key's passphrase), and
# these, whose names do not (a private key in PEM, an OAuth config line with its
# clientSecret=).
SECRET_WORDS = ("password", "secret", "passphrase", "private.key", "jaas")
SECRET_PROPERTIES = frozenset({"sasl.oauthbearer.config", "ssl.key.pem"})


def is_secret(name: str) -> bool:
    """Whether the client property ``name`` holds a secret (never printed or logged)."""
    return name in SECRET_PROPERTIES or any(word in name for word in SECRET_WORDS)


def short_duration(text: str) -> timedelta | None:
    """``500ms``, ``5s``, ``10m``, ``1h`` or ``2d`` as a timedelta; None for other text.
    Raises OverflowError for a duration beyond what a timedelta holds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


class Settings(BaseModel):
    """Where Kourier finds Kafka and how it names its topics.

    ``kafka`` holds extra librdkafka properties (SASL, TLS, ...) that are passed
    unchanged to every Kafka client Kourier creates. From the environment they
    are read as ``KOURIER_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` ->
    ``security.protocol``.
    """

    model_config = ConfigDict(frozen=True)

    bootstrap_servers: str = "127.0.0.1:9092"
    namespace: str = "kourier"
    partitions: int = Field(default=8, ge=1, le=10_000)
    kafka: dict[str, str] = Field(default_factory=dict)
    token: str | None = Field(
        default=None, repr=False, description="bearer token the ingress and admin API require"
    )
    denied_headers: tuple[str, ...] = Field(
        default=(),
        description="request headers never stored with an invocation, besides the credentials "
        "that streams.wire.headers.DENIED_HEADERS names",
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description="Host names the admin API answers on a loopback address, besides "
        "localhost and loopback IPs (a reverse proxy on the same machine that passes its "
        "own name on)",
    )
    call_timeout: timedelta = Field(
        default=timedelta(minutes=10),
        gt=timedelta(0),
        description="how long an HTTP call waits for its outcome before answering 408 "
        "(the invocation goes on; attach to it for its outcome)",
    )
    stall_after: timedelta = Field(
        default=timedelta(minutes=2),
        ge=timedelta(seconds=1),
        description="how long the readers of a partition a worker owns (or a client reads) "
        "may wait at an open transaction before it is reported as stalled "
        "(streams/kafka/stalls.py)",
    )
    run_threads: int = Field(
        default=64, ge=1, le=4096, description="threads for synchronous ctx.run actions"
    )
    replication_factor: int | None = Field(
        default=None,
        ge=1,
        le=32,
        description="replicas of each topic Kourier creates; min(3, brokers) when unset",
    )
    # The retry policy of handlers whose service and decorator name none (a worker's).
    retry_initial: timedelta = Field(
        default=timedelta(milliseconds=50), gt=timedelta(0), description="first back-off"
    )
    retry_factor: float = Field(
        default=2.0, ge=1, allow_inf_nan=False, description="back-off growth per attempt"
    )
    retry_max_interval: timedelta = Field(
        default=timedelta(seconds=60), gt=timedelta(0), description="longest back-off"
    )
    retry_max_attempts: int | None = Field(
        default=20,
        ge=1,
        description="failed attempts before the invocation is paused; none: retried forever",
    )

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        if not _NAMESPACE.fullmatch(value):
            raise ValueError(
                f"namespace {value!r} may hold only letters, digits, '.', '_' and '-' (1-100 chars)"
            )
        return value

    @field_validator("denied_headers", "allowed_hosts")
    @classmethod
    def _lower_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(name.strip().lower() for name in value if name.strip())

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        """Without the newline a Secret made from a file ends with, which no request's
        header carries (every request was a 401); all blanks is no token."""
        return None if value is None else (value.strip() or None)

    @field_validator("retry_max_attempts", mode="before")
    @classmethod
    def _forever(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() == "none" else value

    @field_validator("call_timeout", "stall_after", "retry_initial", "retry_max_interval",
                     mode="wrap")  # fmt: skip
    @classmethod
    def _duration(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """``KOURIER_CALL_TIMEOUT=90s`` (or ``500ms``, ``10m``, ``1h``; plain seconds, and
        what pydantic reads: ISO-8601 ``PT90S``, ``01:30:00``)."""
        given = value
        if isinstance(value, str):
            text = value.strip()
            try:
                short = float(text) if _SECONDS.fullmatch(text) else short_duration(text)
            except OverflowError:
                raise ValueError(f"duration {text!r} is too long") from None
            value = text if short is None else short
        try:
            return handler(value)
        except ValidationError as error:
            if not str(error.errors()[0]["type"]).startswith("time_delta"):
                raise  # read, and out of bounds: pydantic's words say which
            # Its words for "5x" are about ISO-8601's day identifier.
            raise ValueError(
                f"invalid duration {given!r}: use 500ms, 90s, 10m, 1h or PT90S"
            ) from None

    @property
    def retry_policy(self) -> RetryPolicy:
        """The worker's default retry policy (``KOURIER_RETRY_*``)."""
        return RetryPolicy(
            initial=self.retry_initial,
            factor=self.retry_factor,
            max_interval=self.retry_max_interval,
            max_attempts=self.retry_max_attempts,
        )

    @property
    def header_denylist(self) -> frozenset[str]:
        """Every header name kept out of invocation metadata."""
        return DENIED_HEADERS | frozenset(self.denied_headers)  # lower-cased when read

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``KOURIER_*`` variables; non-``None`` overrides (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        named = {field: var for field, var in _VARIABLES if env.get(var)}  # what said what
        for field, var in named.items():
            values[field] = env[var]
        for field, var in (("denied_headers", "KOURIER_DENIED_HEADERS"),
                           ("allowed_hosts", "KOURIER_ALLOWED_HOSTS")):  # fmt: skip
            if env.get(var):  # comma-separated
                values[field] = tuple(env[var].split(","))
                named[field] = var
        values["kafka"] = {
            name[len(_KAFKA_PREFIX) :].lower().replace("_", "."): value
            for name, value in env.items()
            if name.startswith(_KAFKA_PREFIX) and value  # empty: unset, as for the others
        }
        flags = {k: v for k, v in overrides.items() if v is not None}
        values.update(flags)
        named.update({field: "--" + field.replace("_", "-") for field in flags})
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise SettingsError(_one_line(error, named, values)) from None

    def client_config(
        self, extra: Mapping[str, ClientValue] | None = None, /, **more: ClientValue
    ) -> dict[str, ClientValue]:
        """librdkafka configuration for a new client: bootstrap, pass-through, then extras."""
        config: dict[str, ClientValue] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(self.kafka)
        config.update(extra or {})
        config.update(more)
        return config

    def producer_config(
        self, extra: Mapping[str, ClientValue] | None = None, /, **more: ClientValue
    ) -> dict[str, ClientValue]:
        """A producer's configuration: every write waits for all in-sync replicas."""
        return self.client_config({"acks": "all", **(extra or {})}, **more)

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict that is safe to print: secret properties are masked."""
        data = self.model_dump()
        if data.get("token"):
            data["token"] = "***"
        data["kafka"] = {k: ("***" if is_secret(k) else v) for k, v in self.kafka.items()}
        return data


#: The variables :meth:`Settings.from_env` reads, by the field each sets.
_VARIABLES = (
    ("bootstrap_servers", "KOURIER_BOOTSTRAP_SERVERS"),
    ("namespace", "KOURIER_NAMESPACE"),
    ("partitions", "KOURIER_PARTITIONS"),
    ("token", "KOURIER_TOKEN"),
    ("call_timeout", "KOURIER_CALL_TIMEOUT"),
    ("stall_after", "KOURIER_STALL_AFTER"),
    ("run_threads", "KOURIER_RUN_THREADS"),
    ("replication_factor", "KOURIER_REPLICATION_FACTOR"),
    ("retry_initial", "KOURIER_RETRY_INITIAL"),
    ("retry_factor", "KOURIER_RETRY_FACTOR"),
    ("retry_max_interval", "KOURIER_RETRY_MAX_INTERVAL"),
    ("retry_max_attempts", "KOURIER_RETRY_MAX_ATTEMPTS"),
)


class SettingsError(KourierError, ValueError):
    """A ``KOURIER_*`` variable or a flag whose value cannot be used: one line naming it."""


def _one_line(error: ValidationError, named: Mapping[str, str], given: Mapping[str, Any]) -> str:
    """Each refused value as ``NAME='value': why``, by the variable or flag that gave it,
    as it was given."""
    said = []
    for found in error.errors():
        field = str(found["loc"][0]) if found["loc"] else ""
        why = str(found["msg"]).removeprefix("Value error, ")
        said.append(f"{named.get(field, field)}={given.get(field, found.get('input'))!r}: {why}")
    return "; ".join(said)
