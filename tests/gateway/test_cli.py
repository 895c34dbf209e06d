"""The ``taskpoint`` CLI, driven as a subprocess against a running server.

The server is ``taskpoint run``'s own code (``run_all``: gateway and supervisor
in one process, in-process broker, SQLite in the test's folder) with a
processor of this module that reads instructions from each document's text:
``FAIL`` fails it for good, ``FLAKY`` fails its first attempt in this process,
``SLOW`` makes it take a while, ``HANG`` two minutes. Run this module (``python -m
tests.gateway.test_cli``) and it serves until SIGTERM, as ``taskpoint run``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKPOINT = str(Path(sys.executable).parent / "taskpoint")


# The server side: a processor steered by the documents' text.


class DemoProcessor:
    """Counts a document's words; ``FAIL``, ``FLAKY`` and ``SLOW`` steer it."""

    name = "noop"

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    async def process(self, ctx: Any) -> dict[str, Any] | None:
        from actors.processors import PermanentError, TransientError

        text = (await ctx.content()).text or ""
        key = (ctx.task.task_id, ctx.doc_id)
        ctx.tokens.add(10, 5)
        if "SLOW" in text:
            await asyncio.sleep(0.3)
        if "HANG" in text:
            await asyncio.sleep(120)
        if "FAIL" in text:
            raise PermanentError(f"document {ctx.doc_id!r} asks to fail")
        if "FLAKY" in text and key not in self.seen:
            self.seen.add(key)
            raise TransientError(f"document {ctx.doc_id!r} fails its first attempt")
        return {"words": len(text.split())}


def serve() -> int:
    """Run gateway and supervisor as ``taskpoint run`` does, with DemoProcessor."""
    from gateway.cli import run
    from gateway.logs import configure_logging
    from gateway.runtime import run_all
    from gateway.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    processor = DemoProcessor()
    return run(run_all(settings, processors=lambda name: processor))


# The test side.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPOINT_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def wait_until_serving(url: str, process: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not serve within 30 s:\n{log.read_text()}")


@dataclass
class Server:
    url: str
    store_url: str
    process: subprocess.Popen[Any]
    token: str = ""

    def cli(self, *argv: str, token: str | None = None, **env: str) -> Result:
        """Run ``taskpoint ARGV`` against this server."""
        given = {
            "TASKPOINT_URL": self.url,
            "TASKPOINT_TOKEN": self.token if token is None else token,
            "TASKPOINT_STORE_URL": self.store_url,
            **env,
        }
        done = subprocess.run(
            [TASKPOINT, *argv],
            env=clean_env(**{k: v for k, v in given.items() if v}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def status(self, task_id: str) -> dict[str, Any]:
        result = self.cli("status", task_id, "--json")
        assert result.code == 0, result
        return json.loads(result.stdout)

    def wait_for(self, task_id: str, *states: str, within: float = 20) -> dict:
        deadline = time.monotonic() + within
        while True:
            current = self.status(task_id)
            if current["state"] in states:
                return current
            assert time.monotonic() < deadline, (states, current)
            time.sleep(0.2)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout.strip().splitlines()[-1])


def start_server(tmp_path: Path, **env: str) -> tuple[Server, Path]:
    port = free_port()
    store_url = f"sqlite:///{tmp_path / 'checkpoints.db'}"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.gateway.test_cli"],
            env=clean_env(
                TASKPOINT_GATEWAY_PORT=str(port),
                TASKPOINT_STORE_URL=store_url,
                TASKPOINT_SWEEP_INTERVAL="0.2",
                **env,
            ),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", store_url, process)
    wait_until_serving(server.url, process, log)
    return server, log


def stop_server(server: Server, log: Path) -> None:
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server, log = start_server(tmp_path_factory.mktemp("cli-server"))
    try:
        made = server.cli("token", "create", "--tenant", "cli-test", "--json")
        assert made.code == 0, made
        server.token = made.json()["token"]
        assert server.token.startswith("tp_")
        yield server
    finally:
        stop_server(server, log)


def write_folder(folder: Path, texts: dict[str, str]) -> Path:
    for name, text in texts.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def test_a_folder_is_submitted_watched_and_its_results_read(server, tmp_path):
    folder = write_folder(
        tmp_path / "docs",
        {"a.txt": "one two three", "sub/b.txt": "four five", "sub/deep/c.md": "six"},
    )
    (folder / "image.bin").write_bytes(b"\x89PNG\x00\x01")
    (folder / ".hidden").write_text("not a document")

    submitted = server.cli("submit", str(folder))
    assert submitted.code == 0, submitted
    task_id = submitted.stdout.strip()
    assert "submitted 3 documents" in submitted.stderr

    watched = server.cli("watch", task_id, "--interval", "0.2")
    assert watched.code == 0, watched
    assert f"task {task_id} completed: 3/3 completed" in watched.stdout

    status = server.status(task_id)
    assert status["completed_documents"] == status["total_documents"] == 3
    assert status["token_count"]["total"] == 45
    human = server.cli("status", task_id)
    assert "state     completed" in human.stdout

    result = server.cli("result", task_id, "sub/b.txt", "--json")
    assert result.code == 0, result
    assert result.json()["result"] == {"words": 2}


def test_json_lines_failures_and_retry_failed(server, tmp_path):
    lines = [
        {"doc_id": "ok-1", "text": "fine"},
        {"doc_id": "flaky-1", "text": "FLAKY once"},
        {"doc_id": "flaky-2", "text": "FLAKY twice"},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")

    submitted = server.cli("submit", str(path), "--max-attempts", "1", "--json")
    assert submitted.code == 0, submitted
    task_id = submitted.json()["task_id"]

    watched = server.cli("watch", task_id, "--interval", "0.2", "--json")
    assert watched.code == 10, watched
    ended = watched.json()
    assert ended["state"] == "completed_with_failures"
    assert {d["doc_id"] for d in ended["failed"]} == {"flaky-1", "flaky-2"}
    assert "flaky-1  attempts 1  TransientError" in server.cli("status", task_id).stdout

    retried = server.cli("retry-failed", task_id, "--doc-id", "flaky-1", "--json")
    assert retried.code == 0, retried
    assert retried.json()["action"] == "retry-failed"
    server.wait_for(task_id, "running", "completed_with_failures", within=5)
    deadline = time.monotonic() + 20
    while server.status(task_id)["failed_documents"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    server.cli("retry-failed", task_id)
    server.wait_for(task_id, "completed")
    assert server.cli("watch", task_id).code == 0


def test_pause_resume_cancel(server, tmp_path):
    folder = write_folder(
        tmp_path / "slow", {f"doc-{i:02d}.txt": f"SLOW {i}" for i in range(30)}
    )
    submitted = server.cli("submit", str(folder), "--concurrency", "1")
    task_id = submitted.stdout.strip()

    paused = server.cli("pause", task_id)
    assert paused.code == 0, paused
    assert f"pause requested for task {task_id}" in paused.stdout
    at_pause = server.wait_for(task_id, "paused")
    assert at_pause["completed_documents"] < 30
    time.sleep(0.6)
    assert (
        server.status(task_id)["completed_documents"]
        == (at_pause["completed_documents"])
    )

    assert server.cli("resume", task_id).code == 0
    server.wait_for(task_id, "running")
    cancelled = server.cli("cancel", task_id, "--json")
    assert cancelled.code == 0, cancelled
    assert cancelled.json()["task_id"] == task_id

    watched = server.cli("watch", task_id, "--interval", "0.2")
    assert watched.code == 12, watched
    assert "cancelled" in watched.stdout


def test_a_legacy_task_that_fails_exits_watch_with_its_code(server, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("FAIL now")
    submitted = server.cli("submit", str(path), "--no-checkpoints", "--json")
    assert submitted.code == 0, submitted
    task_id = submitted.json()["task_id"]
    assert server.cli("watch", task_id, "--interval", "0.2").code == 11
    refused = server.cli("resume", task_id)
    assert refused.code == 4, refused
    assert refused.stderr.startswith("taskpoint: ")


def test_errors_carry_the_servers_message_and_their_exit_code(server, tmp_path):
    bad = server.cli("status", "no-such-task", token="tp_not-a-real-token")
    assert bad.code == 5, bad
    request = urllib.request.Request(
        f"{server.url}/api/v1/task/no-such-task/checkpoint-status",
        headers={"Authorization": "Bearer tp_not-a-real-token"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    message = json.loads(refused.value.read())["error"]["message"]
    assert bad.stderr == f"taskpoint: {message}\n"

    missing = server.cli("status", "0123456789abcdef")
    assert missing.code == 3, missing
    assert "0123456789abcdef" in missing.stderr

    no_token = server.cli("status", "x", token="")
    assert no_token.code == 5
    assert "TASKPOINT_TOKEN" in no_token.stderr

    assert server.cli("submit", str(tmp_path / "nowhere")).code == 2
    assert server.cli("watch").code == 2

    down = server.cli("status", "x", TASKPOINT_URL=f"http://127.0.0.1:{free_port()}")
    assert down.code == 6, down
    assert "cannot reach the gateway" in down.stderr


def test_documents_are_collected_from_folders_files_and_json_lines(tmp_path):
    from gateway.inputs import InputError, collect_documents

    folder = write_folder(tmp_path / "f", {"a.txt": "A", "n/b.txt": "B"})
    (folder / "n" / "c.jsonl").write_text('{"doc_id": "c", "uri": "s3://x/c"}\n\n')
    single = write_folder(tmp_path / "g", {"d.txt": "D"}) / "d.txt"
    documents = collect_documents([str(folder), str(single)])
    assert documents == [
        {"doc_id": "a.txt", "text": "A"},
        {"doc_id": "n/b.txt", "text": "B"},
        {"doc_id": "c", "uri": "s3://x/c"},
        {"doc_id": "d.txt", "text": "D"},
    ]
    with pytest.raises(InputError, match=re.escape("'a.txt' is given twice")):
        collect_documents([str(folder), str(folder / "a.txt")])
    (tmp_path / "bad.jsonl").write_text('{"doc_id": "x"}\nnot json\n')
    with pytest.raises(InputError, match=re.escape("bad.jsonl:2: not JSON")):
        collect_documents([str(tmp_path / "bad.jsonl")])
    with pytest.raises(InputError, match="no documents"):
        collect_documents([str(write_folder(tmp_path / "empty", {".h": "x"}))])


def test_the_progress_line_shows_counts_tokens_pace_and_eta():
    from gateway.progress import render

    line = render(
        {
            "state": "running",
            "progress": 0.52,
            "total_documents": 1000,
            "completed_documents": 517,
            "failed_documents": 3,
            "running_documents": 8,
            "pending_documents": 472,
            "token_count": {
                "prompt": 1_000_000,
                "completion": 234_000,
                "total": 1_234_000,
            },
            "throughput": 12.34,
            "eta_seconds": 3725,
        }
    )
    assert line.startswith("[############------------]  52% running")
    for part in ("517/1000 done", "3 failed", "8 running", "472 pending"):
        assert part in line
    assert "tokens 1.2M" in line
    assert "12.3 docs/s" in line
    assert line.endswith("ETA 1:02:05")


def test_the_gateway_alone_refuses_the_in_process_broker(tmp_path):
    done = subprocess.run(
        [TASKPOINT, "gateway"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert "TASKPOINT_BROKER_URL" in done.stderr


def test_sigterm_stops_the_gateway_first_and_a_second_one_exits_at_once(tmp_path):
    server, log = start_server(tmp_path, TASKPOINT_DRAIN_TIMEOUT="60")
    try:
        server.token = server.cli("token", "create", "--tenant", "t").stdout.strip()
        path = write_folder(tmp_path / "h", {"hang.txt": "HANG"}) / "hang.txt"
        task_id = server.cli("submit", str(path)).stdout.strip()
        deadline = time.monotonic() + 15
        while server.status(task_id)["running_documents"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)

        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "gateway" not in server.cli("status", task_id).stderr:
            assert time.monotonic() < deadline, "the gateway still answers"
            time.sleep(0.1)
        assert server.process.poll() is None, "the supervisor did not drain"

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 128 + signal.SIGTERM
        assert "second SIGTERM: exiting now" in log.read_text()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def management(amqp_url: str, method: str, path: str, body: Any = None) -> Any:
    """Call RabbitMQ's management API beside the broker of ``amqp_url``."""
    parsed = urllib.parse.urlsplit(amqp_url)
    request = urllib.request.Request(
        f"http://{parsed.hostname}:15672/api{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    credentials = f"{parsed.username or 'guest'}:{parsed.password or 'guest'}"
    request.add_header(
        "Authorization", "Basic " + b64encode(credentials.encode()).decode()
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        text = answer.read()
    return json.loads(text) if text else None


def test_on_rabbitmq_a_pause_published_from_the_console_is_obeyed(
    amqp_url, broker_prefix, tmp_path
):
    server, log = start_server(
        tmp_path, TASKPOINT_BROKER_URL=amqp_url, TASKPOINT_BROKER_PREFIX=broker_prefix
    )
    try:
        server.token = server.cli("token", "create", "--tenant", "ops").stdout.strip()
        folder = write_folder(
            tmp_path / "slow", {f"doc-{i:02d}.txt": f"SLOW {i}" for i in range(20)}
        )
        task_id = server.cli("submit", str(folder), "--concurrency", "1").stdout.strip()
        server.wait_for(task_id, "running")

        message = {"task_id": task_id, "action": "pause"}
        routed = management(
            amqp_url,
            "POST",
            "/exchanges/%2F/amq.default/publish",
            {
                "routing_key": f"{broker_prefix}.control",
                "payload": json.dumps(message),
                "payload_encoding": "string",
                "properties": {"delivery_mode": 2},
            },
        )
        assert routed == {"routed": True}
        paused = server.wait_for(task_id, "paused")
        assert paused["completed_documents"] < 20

        assert server.cli("resume", task_id).code == 0
        assert server.cli("watch", task_id, "--interval", "0.2").code == 0
    finally:
        stop_server(server, log)
        queues = management(amqp_url, "GET", "/queues/%2F?columns=name")
        for queue in queues:
            if queue["name"].startswith(broker_prefix):
                name = urllib.parse.quote(queue["name"], safe="")
                management(amqp_url, "DELETE", f"/queues/%2F/{name}")
        management(amqp_url, "DELETE", f"/exchanges/%2F/{broker_prefix}.broadcast")


if __name__ == "__main__":
    sys.exit(serve())
