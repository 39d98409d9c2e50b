"""Faust's ``broker_credentials`` from Kourier's Kafka settings: one set of
``KOURIER_KAFKA_*`` variables connects a Faust app's own Kafka client (aiokafka) as it
connects Kourier's clients, or is refused where it cannot (re-exported by
:mod:`streams.faust`)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

import faust

from streams.errors import KourierError
from streams.settings import Settings

__all__ = ["FaustSettingsError", "broker_credentials"]

#: SASL mechanisms that Faust's Kafka client (aiokafka) takes a user name and password for.
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: librdkafka TLS properties that have no counterpart here: set, they are refused rather
#: than dropped, so that the app never connects less securely than Kourier's own clients.
_UNMAPPED = (
    "ssl.ca.pem",
    "ssl.certificate.pem",
    "ssl.key.pem",
    "ssl.keystore.location",
    "ssl.crl.location",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "ssl.sigalgs.list",
)


class FaustSettingsError(KourierError, ValueError):
    """Kourier's Kafka settings ask for something :func:`broker_credentials` cannot give
    Faust's Kafka client: the app's ``broker_credentials`` must be set by hand."""


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust's ``broker_credentials`` from the Kafka settings Kourier's own clients use, so
    that one set of ``KOURIER_KAFKA_*`` variables connects the whole app; None for plain
    text::

        app = faust.App("shop-orders", broker=..., broker_credentials=broker_credentials(settings))

    Read, with librdkafka's meanings: ``security.protocol``; for SASL, ``sasl.mechanism``
    (or ``sasl.mechanisms``: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), ``sasl.username`` and
    ``sasl.password``; for TLS, ``ssl.ca.location`` (a file, a directory or ``probe``), a
    client certificate (``ssl.certificate.location``, ``ssl.key.location``,
    ``ssl.key.password``), ``ssl.endpoint.identification.algorithm`` and
    ``enable.ssl.certificate.verification``. Anything else that bears on the connection
    (GSSAPI, OAUTHBEARER, PEM strings, keystores, revocation lists, cipher lists) raises
    :class:`FaustSettingsError`, as does a SASL user without a password."""
    kafka = settings.kafka
    protocol = kafka.get("security.protocol", "plaintext").upper()  # case-blind, as there
    if protocol == "PLAINTEXT":
        return None
    if protocol not in ("SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise FaustSettingsError(f"security.protocol {protocol!r} is not one Kafka knows")
    context = _tls_context(kafka) if protocol in ("SSL", "SASL_SSL") else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    # librdkafka's default is GSSAPI; its names are matched as written.
    mechanism = kafka.get("sasl.mechanism", kafka.get("sasl.mechanisms", "GSSAPI"))
    if mechanism not in _SASL_MECHANISMS:
        raise FaustSettingsError(
            f"sasl.mechanism {mechanism}: Kourier gives Faust's Kafka client only "
            f"{', '.join(_SASL_MECHANISMS)}; set the app's broker_credentials yourself"
        )
    username, password = kafka.get("sasl.username"), kafka.get("sasl.password")
    if not username or password is None:
        raise FaustSettingsError(
            f"sasl.mechanism {mechanism} takes sasl.username and sasl.password"
        )
    return faust.SASLCredentials(
        username=username, password=password, ssl_context=context, mechanism=mechanism
    )


def _tls_context(kafka: Mapping[str, str]) -> ssl.SSLContext:
    """A client's TLS context from librdkafka's ``ssl.*`` properties."""
    unmapped = [name for name in _UNMAPPED if name in kafka]
    if unmapped:
        raise FaustSettingsError(
            f"{', '.join(unmapped)}: not given to Faust's Kafka client by Kourier; "
            "set the app's broker_credentials yourself"
        )
    authorities = kafka.get("ssl.ca.location", "probe")
    if authorities == "probe":  # the system's certificate store
        context = ssl.create_default_context()
    elif Path(authorities).is_dir():
        context = ssl.create_default_context(capath=authorities)
    else:
        context = ssl.create_default_context(cafile=authorities)
    certificate, key = kafka.get("ssl.certificate.location"), kafka.get("ssl.key.location")
    if key is not None and certificate is None:
        raise FaustSettingsError("ssl.key.location without ssl.certificate.location")
    if certificate is not None:
        context.load_cert_chain(certificate, key, kafka.get("ssl.key.password"))
    if kafka.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    if kafka.get("enable.ssl.certificate.verification", "true").lower() in ("false", "0"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
