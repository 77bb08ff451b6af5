"""The runtime's subcommands: worker, gateway, and the queue operations."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Runtime commands are registered here as they are built."""
