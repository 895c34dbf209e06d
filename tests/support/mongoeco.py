"""Start and stop the MongoDB-protocol test server (mongoeco) as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

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
        self.process: subprocess.Popen[str] | None = None

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
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
            if line.startswith("listening on"):
                return
        self.stop()
        raise RuntimeError(f"mongoeco server did not start on port {self.port}")

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
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
