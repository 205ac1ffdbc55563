"""The command line: one Typer app (:mod:`nasopt.cli.app`), and the launcher of local workers."""

from nasopt.cli.app import main

__all__ = ["main"]
