"""Which request headers travel with an invocation, and which never do.

Headers reach handlers through the invocation's metadata, which is written to Kafka and
shown by the admin API. Headers that carry credentials are therefore dropped on the way
in, by the HTTP ingress and again by the worker (for records that other producers wrote):
the default deny-list below, plus any that ``KOURIER_DENIED_HEADERS`` names.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Credentials, by their usual names. Matched case-insensitively.
DENIED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-csrf-token",
        "x-xsrf-token",
    }
)


def allowed_headers(headers: Mapping[str, str], deny: frozenset[str]) -> dict[str, str]:
    """``headers`` without those named in ``deny`` (names compared in lower case)."""
    if not headers:  # most records carry none
        return {}
    return {name: value for name, value in headers.items() if name.lower() not in deny}
