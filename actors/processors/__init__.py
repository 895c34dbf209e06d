"""Processors, found by name through the ``taskpoint.processors`` entry points.

A package adds its own processor by declaring, in its ``pyproject.toml``::

    [project.entry-points."taskpoint.processors"]
    mytype = "mypackage.module:MyProcessor"

and a task of type ``mytype`` then runs it. The entry point names a class (made
with no arguments) or a ready instance.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from actors.processors.base import (
    PermanentError,
    Processor,
    ProcessorContext,
    ProcessorError,
    TokenLedger,
    TransientError,
    UnknownProcessor,
)

GROUP = "taskpoint.processors"

__all__ = [
    "GROUP",
    "PermanentError",
    "Processor",
    "ProcessorContext",
    "ProcessorError",
    "TokenLedger",
    "TransientError",
    "UnknownProcessor",
    "load_processor",
]


def load_processor(name: str) -> Processor:
    """Return the processor registered under ``name``.

    Raises:
        UnknownProcessor: nothing is registered under that name.
    """
    found = entry_points(group=GROUP)
    for entry in found:
        if entry.name == name:
            loaded = entry.load()
            processor = loaded() if isinstance(loaded, type) else loaded
            if not isinstance(processor, Processor):
                raise UnknownProcessor(name, sorted(e.name for e in found))
            return processor
    raise UnknownProcessor(name, sorted(e.name for e in found))
