"""Start and stop the MongoDB-protocol test server (mongoeco) as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "scripts" / "mongoeco_server.py"
DEFAULT_PYTHON = ROOT / ".services" / "mongoeco-venv" / "bin" / "python"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MongoEcoServer:
    """One mongoeco wire server on a port of its own, owned by the tests.

    Args:
        port: the port; a free one when omitted.
        sqlite_path: keep the data in this SQLite file (survives a restart);
            in memory when omitted.
    """

    def __init__(self, port: int | None = None, sqlite_path: Path | None = None):
        self.port = port or free_port()
        self.sqlite_path = sqlite_path
        self.python = Path(os.environ.get("TASKPOINT_MONGOECO_PYTHON", DEFAULT_PYTHON))
        self.process: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout: float = 60.0) -> None:
        if not self.python.exists():
            raise RuntimeError(
                f"no Python 3.13 with mongoeco at {str(self.python)!r}: run "
                "`make services-venv` or set TASKPOINT_MONGOECO_PYTHON"
            )
        cmd = [
            str(self.python),
            str(LAUNCHER),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.sqlite_path is not None:
            cmd += ["--sqlite", str(self.sqlite_path)]
        # The server's output goes to a file, never a pipe: a pipe nobody
        # reads would fill up and stall the server.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (kept for the server's life)
            prefix="mongoeco-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"listening on" in Path(self.log.name).read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        output = Path(self.log.name).read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(
            f"mongoeco server did not start on port {self.port}:\n{output}"
        )

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.log is not None:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
            self.log = None
