"""Run a mongoeco MongoDB-protocol server for tests and local development.

mongoeco has no command-line entry point, so this launcher builds its wire
proxy around a storage engine, waits until the listener accepts connections,
prints ``listening on HOST:PORT`` once, and closes cleanly on SIGTERM or SIGINT.
It needs the Python 3.13 interpreter that mongoeco is installed in::

    python scripts/mongoeco_server.py --host 127.0.0.1 --port 27017 [--sqlite PATH]

Connect with ``mongodb://HOST:PORT/?directConnection=true``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from mongoeco.engines import MemoryEngine, SQLiteEngine
from mongoeco.wire import AsyncMongoEcoProxyServer

if TYPE_CHECKING:
    from mongoeco.engines.base import AsyncStorageEngine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the host, the port and the optional SQLite path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, required=True, help="port to bind")
    parser.add_argument(
        "--sqlite",
        metavar="PATH",
        default=None,
        help="keep the data in this SQLite file (default: in memory)",
    )
    return parser.parse_args(argv)


def build_engine(sqlite_path: str | None) -> AsyncStorageEngine:
    """Return the SQLite engine when a path is given, else the memory engine."""
    if sqlite_path is not None:
        return SQLiteEngine(sqlite_path)
    return MemoryEngine()


def install_stop_handlers(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGTERM or SIGINT instead of dying mid-write."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)


async def serve(host: str, port: int, sqlite_path: str | None) -> None:
    """Serve until a stop signal arrives, then close the proxy and its engine."""
    stop = asyncio.Event()
    install_stop_handlers(stop)
    server = AsyncMongoEcoProxyServer(
        engine=build_engine(sqlite_path), host=host, port=port
    )
    # start() returns once the listener is serving: only then may a test that
    # waits for the line below connect.
    address = await server.start()
    try:
        print(f"listening on {address.host}:{address.port}", flush=True)
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    """Run the server; return the process exit status."""
    args = parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.sqlite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
