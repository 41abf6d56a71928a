"""The `edgeinfer` command: one module per command group."""

from edgeinfer.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
