"""The ``kourier`` command (``python -m streams.cli``, or the ``kourier`` script)."""

from streams.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
