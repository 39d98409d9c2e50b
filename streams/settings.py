"""One typed settings object, read from ``KOURIER_*`` environment variables and CLI flags."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAMESPACE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_KAFKA_PREFIX = "KOURIER_KAFKA_"
#: A librdkafka configuration value.
ClientValue = str | int | float | bool
# Client properties whose values must never be printed or logged.
SECRET_PROPERTIES = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"}
)


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

    @field_validator("namespace")
    @classmethod
    def _valid_namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError(
                f"namespace {value!r} may hold only letters, digits, '.', '_' and '-' (1-100 chars)"
            )
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``KOURIER_*`` variables; non-``None`` overrides (CLI flags) win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field, var in (
            ("bootstrap_servers", "KOURIER_BOOTSTRAP_SERVERS"),
            ("namespace", "KOURIER_NAMESPACE"),
            ("partitions", "KOURIER_PARTITIONS"),
            ("token", "KOURIER_TOKEN"),
        ):
            if env.get(var):
                values[field] = env[var]
        values["kafka"] = {
            name[len(_KAFKA_PREFIX) :].lower().replace("_", "."): value
            for name, value in env.items()
            if name.startswith(_KAFKA_PREFIX)
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    def client_config(
        self, extra: Mapping[str, ClientValue] | None = None, /, **more: ClientValue
    ) -> dict[str, ClientValue]:
        """librdkafka configuration for a new client: bootstrap, pass-through, then extras."""
        config: dict[str, ClientValue] = {"bootstrap.servers": self.bootstrap_servers}
        config.update(self.kafka)
        config.update(extra or {})
        config.update(more)
        return config

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict that is safe to print: secret properties are masked."""
        data = self.model_dump()
        if data.get("token"):
            data["token"] = "***"
        data["kafka"] = {k: ("***" if k in SECRET_PROPERTIES else v) for k, v in self.kafka.items()}
        return data
