"""Wiring a process together: store, broker, supervisor, and signals.

Only this module (through the CLI) installs signal handlers: the first SIGTERM
or SIGINT stops the supervisor gracefully, in the order of ``style.md``; a
second one exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable

from actors import failpoints
from actors.broker import Broker
from actors.broker_memory import MemoryBroker
from actors.broker_rabbitmq import RabbitBroker
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


async def run_worker(
    settings: Settings, *, processors: Callable[[str], Processor] = load_processor
) -> None:
    """Run one supervisor process until a signal stops it."""
    failpoints.configure(settings.failpoints)
    stop = asyncio.Event()
    stop_on_signals(stop)
    async with connected(settings) as (store, broker):
        supervisor = Supervisor(
            store, broker, supervisor_config(settings), processors=processors
        )
        await supervisor.start()
        logger.info(
            "worker running store=%s broker=%s",
            settings.store_url.split("@")[-1],
            "in-process"
            if settings.embedded_broker
            else settings.broker_url.split("@")[-1],
        )
        stopped = asyncio.create_task(supervisor.join())
        signalled = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, signalled}, return_when=asyncio.FIRST_COMPLETED)
        await supervisor.stop(timeout=settings.drain_timeout + 30)
        signalled.cancel()
