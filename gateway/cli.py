"""The ``taskpoint`` command.

The entry point reads :class:`gateway.settings.Settings` from the environment,
configures logging once, and wires the parts together for each subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from pydantic import ValidationError

from gateway.logs import configure_logging
from gateway.runtime import run_worker
from gateway.settings import Settings
from store.errors import TaskpointError
from store.factory import store_from_url

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


async def check_store(settings: Settings) -> dict[str, object]:
    """Open the configured store (creating or migrating its schema) and report."""
    store = store_from_url(settings.store_url)
    await store.start()
    try:
        tasks = await store.list_tasks(limit=1000)
    finally:
        await store.stop()
    return {"store_url": settings.store_url, "tasks": len(tasks), "schema": "ok"}


def run(main: Coroutine[Any, Any, None]) -> int:
    """Run a long-lived command; a taskpoint error exits with a message."""
    try:
        asyncio.run(main)
    except TaskpointError as err:
        print(f"taskpoint: {err}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``taskpoint`` command line."""
    parser = argparse.ArgumentParser(
        prog="taskpoint",
        description="Long document jobs with a checkpoint per document.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check", help="open the configured store, create or migrate its schema"
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    settings = commands.add_parser("settings", help="print the effective settings")
    settings.add_argument("--json", action="store_true", help="print JSON")
    commands.add_parser(
        "worker", help="run a supervisor and its document workers until stopped"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``taskpoint`` command and return its exit code."""
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        settings = Settings()
    except ValidationError as err:
        print(f"taskpoint: bad settings: {err}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "worker":
        return run(run_worker(settings))
    try:
        if args.command == "settings":
            report: dict[str, object] = settings.model_dump()
        else:
            report = asyncio.run(check_store(settings))
    except TaskpointError as err:
        print(f"taskpoint: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(report, default=str))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
