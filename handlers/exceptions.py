"""The errors a handler raises or sees."""

from __future__ import annotations


class TerminalError(Exception):
    """Ends the invocation with a failure that is returned to the caller and never retried.

    ``status_code`` is HTTP-like: 4xx for the caller's mistakes, 5xx for the
    handler's, 409 for a cancelled or killed invocation, 408 for a timed-out call. Any
    other code is sent as 500, with the code given named in the message.
    """

    def __init__(self, message: str, status_code: int = 500) -> None:
        # ``raise TerminalError(err, 400)`` with an exception or a dict for the message is
        # common: the failure written for the caller holds its text.
        message = message if isinstance(message, str) else str(message)
        code = status_code if isinstance(status_code, int) else None  # HTTPStatus too
        if code is None or isinstance(code, bool) or not 400 <= code <= 599:
            # Raising ValueError here retried a handler that meant to fail for good (a 302
            # for "moved"): it fails, as 500, and says why.
            message = f"{message} (status_code {status_code!r} is not 400-599: sent as 500)"
            code = 500
        status_code = int(code)
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def __repr__(self) -> str:
        return f"TerminalError({self.message!r}, status_code={self.status_code})"


class NonDeterminismError(Exception):
    """A replayed handler did something other than what its journal recorded.

    The invocation fails instead of corrupting state; fix the handler so that
    it issues the same context operations, in the same order, on every run.
    """
