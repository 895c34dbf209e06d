"""Wiring a process together: store, broker, supervisor, gateway, and signals.

Three processes can be made here: ``run_worker`` (a supervisor), ``run_gateway``
(the HTTP application) and ``run_all`` (both in one process, on one store and
one broker: with no broker URL that is the in-process broker, which only works
because the gateway and the supervisor share it).

Only this module (through the CLI) installs signal handlers: the first SIGTERM
or SIGINT stops gracefully, in the order of ``style.md`` (the gateway first, so
that no new request arrives for a stopping supervisor, then the supervisor,
then the broker and the store); a second one exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from actors import failpoints
from actors.broker import Broker
from actors.broker_memory import MemoryBroker
from actors.broker_rabbitmq import RabbitBroker
from actors.llm import LLMBackend, make_llm
from actors.processors import Processor, load_processor
from actors.supervisor import Supervisor, SupervisorConfig
from gateway.settings import Settings
from store.base import CheckpointStore
from store.factory import store_from_url

logger = logging.getLogger(__name__)


def make_broker(settings: Settings) -> Broker:
    """Return the broker the settings name: RabbitMQ, or the in-process one."""
    if settings.embedded_broker:
        return MemoryBroker(prefix=settings.broker_prefix)
    return RabbitBroker(settings.broker_url, prefix=settings.broker_prefix)


def supervisor_config(settings: Settings) -> SupervisorConfig:
    """Return the supervisor's configuration from the settings."""
    return SupervisorConfig(
        concurrency=settings.worker_concurrency,
        lease_seconds=settings.lease_seconds,
        job_size=settings.job_size,
        sweep_interval=settings.sweep_interval,
        time_limit=settings.document_time_limit,
        drain_timeout=settings.drain_timeout,
        provider_failure_pause=settings.provider_failure_pause,
    )


@contextlib.asynccontextmanager
async def connected(
    settings: Settings,
) -> AsyncIterator[tuple[CheckpointStore, Broker]]:
    """Start the store and the broker; stop them in reverse order."""
    store = store_from_url(settings.store_url)
    await store.start()
    try:
        broker = make_broker(settings)
        await broker.start()
        try:
            yield store, broker
        finally:
            await broker.stop()
    finally:
        await store.stop()


def stop_on_signals(stop: asyncio.Event) -> None:
    """First SIGTERM/SIGINT: set ``stop``. Second: exit at once."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(128 + signum)
        logger.info("%s: stopping gracefully", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


@contextlib.asynccontextmanager
async def provider(settings: Settings) -> AsyncIterator[LLMBackend]:
    """The process's LLM backend, shared by every worker; closed at the end."""
    llm = make_llm(
        settings.llm_backend,
        base_url=settings.llm_base_url or None,
        api_key=settings.llm_api_key or None,
        model=settings.llm_model,
        embedding_model=settings.llm_embedding_model or None,
        concurrency=settings.llm_concurrency,
        timeout=settings.llm_timeout,
    )
    try:
        yield llm
    finally:
        await llm.stop()


async def run_worker(
    settings: Settings, *, processors: Callable[[str], Processor] = load_processor
) -> None:
    """Run one supervisor process until a signal stops it."""
    failpoints.configure(settings.failpoints)
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with connected(settings) as (store, broker), provider(settings) as llm:
        supervisor = Supervisor(
            store, broker, supervisor_config(settings), processors=processors, llm=llm
        )
        await supervisor.start()
        logger.info("worker running %s", describe(settings))
        await _until_stopped(supervisor, stop)
        await supervisor.stop(timeout=settings.drain_timeout + 30)


GATEWAY_SHUTDOWN_TIMEOUT = 5.0
"""Seconds open requests (event streams above all) get when the gateway stops."""


@dataclass(frozen=True)
class Serving:
    """Where a started gateway listens."""

    url: str
    runner: web.AppRunner


def describe(settings: Settings) -> str:
    """Return the store and broker a process uses, without credentials."""
    broker = (
        "in-process" if settings.embedded_broker else settings.broker_url.split("@")[-1]
    )
    return f"store={settings.store_url.split('@')[-1]} broker={broker}"


async def start_gateway(
    settings: Settings, store: CheckpointStore, broker: Broker
) -> Serving:
    """Build the HTTP application and listen on the settings' host and port.

    Port 0 takes a free port; the returned URL names the one taken.
    """
    from gateway.app import make_app  # the application imports aiohttp handlers

    runner = web.AppRunner(
        make_app(settings, store, broker), shutdown_timeout=GATEWAY_SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.gateway_host,
        settings.gateway_port,
        shutdown_timeout=GATEWAY_SHUTDOWN_TIMEOUT,
    )
    await site.start()
    host, port = runner.addresses[0][:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return Serving(url=f"http://{host}:{port}", runner=runner)


def announce(serving: Serving, settings: Settings) -> None:
    """Tell the person who started the process where it serves, on stdout."""
    lines = [
        f"taskpoint serving on {serving.url} ({describe(settings)}, pid {os.getpid()})",
        f"  health:  {serving.url}/healthz",
        "  a token: taskpoint token create --tenant default",
        f"  then:    export TASKPOINT_URL={serving.url} TASKPOINT_TOKEN=<the token>",
    ]
    print("\n".join(lines), flush=True)


async def run_gateway(settings: Settings) -> None:
    """Run the gateway alone until a signal stops it (workers run elsewhere)."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with connected(settings) as (store, broker):
        serving = await start_gateway(settings, store, broker)
        try:
            logger.info("gateway serving url=%s %s", serving.url, describe(settings))
            announce(serving, settings)
            await stop.wait()
        finally:
            await serving.runner.cleanup()
            logger.info("gateway stopped url=%s", serving.url)


async def run_all(
    settings: Settings, *, processors: Callable[[str], Processor] = load_processor
) -> None:
    """Run the gateway and a supervisor in one process until a signal stops it.

    With no broker URL both share the in-process broker, and with the default
    store URL a SQLite file under the working folder: nothing to install.
    """
    failpoints.configure(settings.failpoints)
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with connected(settings) as (store, broker), provider(settings) as llm:
        supervisor = Supervisor(
            store, broker, supervisor_config(settings), processors=processors, llm=llm
        )
        await supervisor.start()
        try:
            serving = await start_gateway(settings, store, broker)
        except BaseException:
            await supervisor.stop(timeout=settings.drain_timeout + 30)
            raise
        logger.info("taskpoint running url=%s %s", serving.url, describe(settings))
        announce(serving, settings)
        await _until_stopped(supervisor, stop)
        # The gateway stops first: a request that arrived now would publish
        # control for a supervisor that no longer consumes it.
        await serving.runner.cleanup()
        await supervisor.stop(timeout=settings.drain_timeout + 30)
        logger.info("taskpoint stopped url=%s", serving.url)


async def _until_stopped(supervisor: Supervisor, stop: asyncio.Event) -> None:
    stopped = asyncio.create_task(supervisor.join())
    signalled = asyncio.create_task(stop.wait())
    await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    if stopped.done():
        logger.error("supervisor stopped on its own: stopping the gateway")
    else:
        stopped.cancel()
