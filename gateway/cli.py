"""The ``taskpoint`` command.

The entry point reads :class:`gateway.settings.Settings` and the client's
``TASKPOINT_URL`` and ``TASKPOINT_TOKEN`` from the environment, configures
logging once, and wires the parts together for each subcommand.

Server commands: ``run`` (gateway and supervisor in one process), ``gateway``,
``worker``; ``check`` and ``settings``; ``token create`` (writes a token's hash
straight to the configured store). Client commands talk to a gateway over
HTTP: ``submit``, ``status``, ``watch``, ``pause``, ``resume``, ``cancel``,
``retry-failed``, ``result``.

Exit codes (also in ``docs/operations.md``):

==  ==========================================================================
0   done
1   failure: the server failed (5xx) or an unexpected error
2   usage: bad arguments or input files; the server refused the request as
    malformed (400, 413, 422)
3   not found: no such task or document (for this token's tenant)
4   conflict: the task's state does not allow it (409)
5   not authorized: no token, or the gateway refused it (401, 403)
6   unavailable: the gateway cannot be reached or is not ready (503)
10  ``watch``: the task ended ``completed_with_failures``
11  ``watch``: the task ended ``failed``
12  ``watch``: the task ended ``cancelled``
130 interrupted (Ctrl-C)
==  ==========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from gateway.client import ApiError, GatewayUnreachable, TaskpointClient
from gateway.inputs import InputError, collect_documents
from gateway.logs import configure_logging
from gateway.progress import ENDED_STATES, ProgressView, human_count, human_duration
from gateway.settings import Settings
from gateway.tokens import hash_token, new_token
from store.errors import TaskpointError
from store.factory import store_from_url

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_AUTH = 5
EXIT_UNAVAILABLE = 6
EXIT_TASK_WITH_FAILURES = 10
EXIT_TASK_FAILED = 11
EXIT_TASK_CANCELLED = 12
EXIT_INTERRUPTED = 130

EXIT_OF_STATUS = {
    400: EXIT_USAGE,
    401: EXIT_AUTH,
    403: EXIT_AUTH,
    404: EXIT_NOT_FOUND,
    409: EXIT_CONFLICT,
    413: EXIT_USAGE,
    422: EXIT_USAGE,
    503: EXIT_UNAVAILABLE,
}
EXIT_OF_END_STATE = {
    "completed": EXIT_OK,
    "completed_with_failures": EXIT_TASK_WITH_FAILURES,
    "failed": EXIT_TASK_FAILED,
    "cancelled": EXIT_TASK_CANCELLED,
}
CONTROL_COMMANDS = ("pause", "resume", "cancel", "retry-failed")
LONG_RUNNING = ("run", "gateway", "worker")

ClientCommand = Callable[[TaskpointClient, argparse.Namespace], Awaitable[int]]


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    """Print ``message`` as taskpoint's error on standard error; return ``code``."""
    print(f"taskpoint: {message}", file=sys.stderr)
    return code


def emit(args: argparse.Namespace, answer: Any, text: str) -> None:
    """Print ``answer`` as one JSON line with ``--json``, else ``text``."""
    print(json.dumps(answer, default=str) if args.json else text, flush=True)


# Server commands


async def check_store(settings: Settings) -> dict[str, object]:
    """Open the configured store (creating or migrating its schema) and report."""
    store = store_from_url(settings.store_url)
    await store.start()
    try:
        tasks = await store.list_tasks(limit=1000)
    finally:
        await store.stop()
    return {"store_url": settings.store_url, "tasks": len(tasks), "schema": "ok"}


async def create_token(
    settings: Settings, tenant: str, label: str | None
) -> dict[str, Any]:
    """Make a token for ``tenant`` and store its hash (never the token)."""
    token = new_token()
    store = store_from_url(settings.store_url)
    await store.start()
    try:
        await store.put_token(hash_token(token), tenant, label=label)
    finally:
        await store.stop()
    return {"token": token, "tenant": tenant, "label": label}


def run(main: Coroutine[Any, Any, None]) -> int:
    """Run a long-lived command; a taskpoint error exits with a message."""
    try:
        asyncio.run(main)
    except TaskpointError as err:
        return fail(str(err))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_OK


def redacted(settings: Settings) -> dict[str, object]:
    """Return the settings with API keys and URL passwords masked."""
    report: dict[str, object] = settings.model_dump()
    for name, value in report.items():
        if name.endswith("api_key") and value:
            report[name] = "***"
        elif name.endswith("_url") and isinstance(value, str):
            report[name] = re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", value)
    return report


def server_command(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``run``, ``gateway``, ``worker``, ``check``, ``settings`` or ``token``."""
    if args.command == "gateway" and settings.embedded_broker:
        return fail(
            "the gateway alone needs TASKPOINT_BROKER_URL: with the in-process "
            "broker its control requests would reach no worker; "
            "`taskpoint run` runs both in one process",
            EXIT_USAGE,
        )
    if args.command in LONG_RUNNING:
        # Imported here: the client commands start faster without the actors.
        from gateway.runtime import run_all, run_gateway, run_worker

        runner = {"run": run_all, "gateway": run_gateway, "worker": run_worker}
        return run(runner[args.command](settings))
    try:
        if args.command == "token":
            answer = asyncio.run(create_token(settings, args.tenant, args.label))
            print("store this token now, it is not shown again:", file=sys.stderr)
            emit(args, answer, answer["token"])
            return EXIT_OK
        if args.command == "settings":
            report: dict[str, object] = redacted(settings)
        else:
            report = asyncio.run(check_store(settings))
    except TaskpointError as err:
        return fail(str(err))
    text = "\n".join(f"{key}: {value}" for key, value in report.items())
    emit(args, report, text)
    return EXIT_OK


# Client commands


def task_config(args: argparse.Namespace) -> dict[str, Any]:
    """Return the task config that the ``submit`` flags ask for."""
    config: dict[str, Any] = {
        "max_attempts": args.max_attempts,
        "concurrency": args.concurrency,
        "token_budget": args.token_budget,
        "backoff_base": args.backoff_base,
        "backoff_cap": args.backoff_cap,
    }
    if args.no_checkpoints:
        config["use_checkpoints"] = False
    return {key: value for key, value in config.items() if value is not None}


async def submit(client: TaskpointClient, args: argparse.Namespace) -> int:
    """``submit``: create a task of the given documents; print its id."""
    documents = collect_documents(args.sources)
    answer = await client.create_task(args.type, documents, task_config(args))
    task_id = str(answer["task_id"])
    print(
        f"submitted {len(documents)} documents as task {task_id} (type {args.type})",
        file=sys.stderr,
    )
    if args.watch:
        if args.json:
            print(json.dumps(answer, default=str), flush=True)
        args.task_id = task_id
        return await watch(client, args)
    emit(args, answer, task_id)
    return EXIT_OK


def describe_status(status: Mapping[str, Any]) -> str:
    """Return a checkpoint-status as a few lines for a person."""
    tokens = status.get("token_count") or {}
    lines = [
        f"task      {status['task_id']} ({status.get('type')})",
        f"state     {status['state']}"
        + (f" ({status['reason']})" if status.get("reason") else ""),
        f"progress  {float(status.get('progress') or 0):.0%}: "
        f"{status.get('completed_documents')}/{status.get('total_documents')} done, "
        f"{status.get('failed_documents')} failed, "
        f"{status.get('running_documents')} running, "
        f"{status.get('pending_documents')} pending, "
        f"{status.get('retry_wait_documents', 0)} waiting to retry, "
        f"{status.get('cancelled_documents')} cancelled",
        f"tokens    {human_count(float(tokens.get('total', 0)))} (prompt "
        f"{tokens.get('prompt', 0)}, completion {tokens.get('completion', 0)})",
        f"pace      {status.get('throughput') or 0:.2f} docs/s, "
        f"ETA {human_duration(status.get('eta_seconds'))}",
        f"can pause {'yes' if status.get('can_pause') else 'no'}",
    ]
    for name in ("created", "started", "paused", "resumed", "completed", "cancelled"):
        if status.get(f"{name}_at"):
            lines.append(f"{name:<9} {status[f'{name}_at']}")
    lines.extend(describe_failed(status.get("failed") or []))
    return "\n".join(lines)


def describe_failed(failed: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return a line per failed document: its id, attempts and last error."""
    if not failed:
        return []
    lines = ["failed documents:"]
    for document in failed:
        error = document.get("error") or {}
        why = f"{error.get('type', '?')}: {error.get('message', '')}" if error else "?"
        lines.append(
            f"  {document['doc_id']}  attempts {document.get('attempts')}  {why}"
        )
    return lines


async def status(client: TaskpointClient, args: argparse.Namespace) -> int:
    """``status``: print the task's checkpoint-status."""
    answer = await client.status(args.task_id)
    emit(args, answer, describe_status(answer))
    return EXIT_OK


async def watch(client: TaskpointClient, args: argparse.Namespace) -> int:
    """``watch``: draw the task's progress until it ends; exit by how it ended."""
    view = ProgressView(sys.stderr, live=sys.stderr.isatty() and not args.json)
    try:
        current = await follow(client, args.task_id, view, args.interval)
    finally:
        view.close()
    state = str(current["state"])
    summary = (
        f"task {current['task_id']} {state}: {current.get('completed_documents')}"
        f"/{current.get('total_documents')} completed, "
        f"{current.get('failed_documents')} failed, "
        f"{current.get('cancelled_documents')} cancelled"
    )
    emit(args, current, summary)
    return EXIT_OF_END_STATE.get(state, EXIT_FAILURE)


async def follow(
    client: TaskpointClient, task_id: str, view: ProgressView, interval: float
) -> dict[str, Any]:
    """Poll the task's checkpoint-status until the task ends; return the last.

    The status is read from the task's counters (O(1) on the server), so a
    poll a second costs the gateway nothing that grows with the task. A
    gateway that cannot be reached for a while (a restart) is waited for.
    """
    while True:
        try:
            current = await client.status(task_id)
        except GatewayUnreachable as err:
            print(f"taskpoint: {err}; trying again", file=sys.stderr)
            await asyncio.sleep(max(interval, 2.0))
            continue
        view.update(current)
        if current["state"] in ENDED_STATES:
            return current
        await asyncio.sleep(interval)


async def control(client: TaskpointClient, args: argparse.Namespace) -> int:
    """``pause``, ``resume``, ``cancel``, ``retry-failed``: publish the request."""
    doc_ids = getattr(args, "doc_ids", None)
    answer = await client.control(args.task_id, args.command, doc_ids=doc_ids)
    text = (
        f"{args.command} requested for task {args.task_id} "
        f"(request {answer.get('request_id')}); the task was {answer.get('state')}"
    )
    emit(args, answer, text)
    return EXIT_OK


async def result(client: TaskpointClient, args: argparse.Namespace) -> int:
    """``result``: print one document's result, or the task's merged result."""
    if args.doc_id is None:
        answer = await client.task_result(args.task_id)
    else:
        answer = await client.document_result(args.task_id, args.doc_id)
    emit(args, answer, json.dumps(answer, indent=2, default=str))
    return EXIT_OK


CLIENT_COMMANDS: dict[str, ClientCommand] = {
    "submit": submit,
    "status": status,
    "watch": watch,
    "result": result,
    **dict.fromkeys(CONTROL_COMMANDS, control),
}


async def call_gateway(command: ClientCommand, args: argparse.Namespace) -> int:
    """Open a client session, run a client command in it, map errors to codes."""
    try:
        async with TaskpointClient(
            args.url, args.token, timeout=args.timeout
        ) as client:
            return await command(client, args)
    except ApiError as err:
        return fail(err.message, EXIT_OF_STATUS.get(err.status, EXIT_FAILURE))
    except GatewayUnreachable as err:
        return fail(str(err), EXIT_UNAVAILABLE)
    except InputError as err:
        return fail(str(err), EXIT_USAGE)
    except TaskpointError as err:
        return fail(str(err))


def client_command(
    args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]
) -> int:
    """Run a client command against the gateway the flags or environment name."""
    args.url = args.url or environ.get("TASKPOINT_URL") or default_url(settings)
    args.token = args.token or environ.get("TASKPOINT_TOKEN")
    if not args.token:
        return fail(
            "no API token: pass --token or set TASKPOINT_TOKEN "
            "(make one with: taskpoint token create --tenant NAME)",
            EXIT_AUTH,
        )
    try:
        return asyncio.run(call_gateway(CLIENT_COMMANDS[args.command], args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def default_url(settings: Settings) -> str:
    """Return the URL of a gateway on this machine with these settings."""
    host = settings.gateway_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{settings.gateway_port}"


# The parser


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``taskpoint`` command line."""
    parser = argparse.ArgumentParser(
        prog="taskpoint",
        description="Long document jobs with a checkpoint per document.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_server_commands(commands)
    client = client_options()
    add_submit(commands, client)
    for name, helptext in (
        ("status", "print a task's checkpoint-status"),
        ("watch", "draw a task's progress until it ends; the exit code says how"),
        ("pause", "pause a task: running documents finish, no new one starts"),
        ("resume", "resume a paused task"),
        ("cancel", "cancel a task; completed documents stay completed"),
        ("retry-failed", "run a task's failed documents again"),
    ):
        command = commands.add_parser(name, parents=[client], help=helptext)
        command.add_argument("task_id", metavar="TASK")
    commands.choices["watch"].add_argument(
        "--interval", type=float, default=1.0, help="seconds between two reads"
    )
    commands.choices["retry-failed"].add_argument(
        "--doc-id", dest="doc_ids", action="append", metavar="DOC_ID",
        help="only this failed document (repeatable); all failed ones by default",
    )  # fmt: skip
    result_command = commands.add_parser(
        "result", parents=[client], help="print a document's or the task's result"
    )
    result_command.add_argument("task_id", metavar="TASK")
    result_command.add_argument("doc_id", metavar="DOC_ID", nargs="?")
    return parser


def add_server_commands(commands: Any) -> None:
    """Add ``run``, ``gateway``, ``worker``, ``check``, ``settings``, ``token``."""
    commands.add_parser(
        "run", help="run the gateway and a supervisor in one process until stopped"
    )
    commands.add_parser("gateway", help="run the HTTP gateway until stopped")
    commands.add_parser(
        "worker", help="run a supervisor and its document workers until stopped"
    )
    check = commands.add_parser(
        "check", help="open the configured store, create or migrate its schema"
    )
    check.add_argument("--json", action="store_true", help="print JSON")
    settings = commands.add_parser("settings", help="print the effective settings")
    settings.add_argument("--json", action="store_true", help="print JSON")
    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser(
        "create", help="make a token for a tenant, store its hash, print it once"
    )
    create.add_argument("--tenant", required=True, help="the tenant it acts for")
    create.add_argument("--label", help="a note to recognise the token by")
    create.add_argument("--json", action="store_true", help="print JSON")


def client_options() -> argparse.ArgumentParser:
    """Return the options every client command shares."""
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url", help="the gateway (default: $TASKPOINT_URL, else this machine's)"
    )
    client.add_argument("--token", help="API token (default: $TASKPOINT_TOKEN)")
    client.add_argument("--json", action="store_true", help="print JSON for scripts")
    client.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per request"
    )
    return client


def add_submit(commands: Any, client: argparse.ArgumentParser) -> None:
    """Add ``submit`` and its task config flags."""
    submit_command = commands.add_parser(
        "submit",
        parents=[client],
        help="create a task from files, folders (recursively) or JSON Lines",
    )
    submit_command.add_argument(
        "sources", nargs="+", metavar="PATH",
        help="a text file, a folder, a .jsonl file, or - for JSON Lines on stdin",
    )  # fmt: skip
    submit_command.add_argument(
        "--type", default="noop", help="the task type (processor); default noop"
    )
    add = submit_command.add_argument
    add("--max-attempts", type=int, help="attempts per document (default 3)")
    add("--concurrency", type=int, help="documents of this task in flight at most")
    add("--token-budget", type=int, help="pause the task once it spent this many")
    add("--backoff-base", type=float, help="first retry delay, seconds")
    add("--backoff-cap", type=float, help="longest retry delay, seconds")
    add(
        "--no-checkpoints",
        action="store_true",
        help="legacy all-or-nothing mode: no pause or resume; a failure fails all",
    )
    add("--watch", action="store_true", help="then watch it, as `watch` does")
    add("--interval", type=float, default=1.0, help="with --watch: seconds per read")


def log_level(command: str, settings: Settings) -> str:
    """Return the log level of a command: the settings' for servers.

    A client command prints its answer on stdout and its errors on stderr;
    INFO lines of the store or the HTTP client there would only be noise.
    """
    if command in (*LONG_RUNNING, "check") or settings.log_level == "DEBUG":
        return settings.log_level
    return "WARNING"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``taskpoint`` command and return its exit code."""
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    try:
        settings = Settings()
    except ValidationError as err:
        return fail(f"bad settings: {err}", EXIT_USAGE)
    configure_logging(log_level(args.command, settings), settings.log_format)
    if args.command in CLIENT_COMMANDS:
        return client_command(args, settings, os.environ)
    return server_command(args, settings)


if __name__ == "__main__":
    sys.exit(main())
