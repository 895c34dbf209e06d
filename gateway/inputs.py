"""Documents for ``taskpoint submit``: from text files, folders and JSON Lines.

A text file becomes one document whose id is its name; a folder is walked
recursively and each text file in it becomes a document whose id is its path
relative to the folder (``notes/a.txt``); a ``.jsonl`` or ``.ndjson`` file, or
``-`` for standard input, holds one JSON object per line with ``doc_id`` and
either ``text`` or ``uri``. Hidden files and folders are skipped, and so are
files that are not UTF-8 text (a folder often holds an image or two).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from store.errors import TaskpointError

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


class InputError(TaskpointError):
    """The documents given on the command line cannot be read."""


def read_text(path: Path) -> str | None:
    """Return a file's text, or None when it is not UTF-8 text."""
    data = path.read_bytes()
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_json_lines(lines: Iterable[str], source: str) -> Iterator[dict[str, str]]:
    """Yield the documents of JSON Lines; blank lines are skipped.

    Raises:
        InputError: a line is not a JSON object with a ``doc_id``.
    """
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as err:
            raise InputError(f"{source}:{number}: not JSON: {err}") from err
        if not isinstance(item, dict) or not isinstance(item.get("doc_id"), str):
            raise InputError(
                f"{source}:{number}: expected an object with a string 'doc_id' "
                "and 'text' or 'uri'"
            )
        yield item


def documents_of_folder(folder: Path) -> Iterator[dict[str, str]]:
    """Yield a document per text file under ``folder``, in path order."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix in JSON_LINES_SUFFIXES:
            yield from documents_of_file(path)
            continue
        text = read_text(path)
        if text is not None:
            yield {"doc_id": relative.as_posix(), "text": text}


def documents_of_file(path: Path) -> Iterator[dict[str, str]]:
    """Yield the documents of one file: JSON Lines, or one text document.

    Raises:
        InputError: a text file that is not UTF-8 text.
    """
    if path.suffix in JSON_LINES_SUFFIXES:
        with path.open(encoding="utf-8") as lines:
            yield from parse_json_lines(lines, str(path))
        return
    text = read_text(path)
    if text is None:
        raise InputError(f"{str(path)!r} is not a UTF-8 text file")
    yield {"doc_id": path.name, "text": text}


def collect_documents(sources: Iterable[str]) -> list[dict[str, str]]:
    """Return the documents of every source, refusing ids given twice.

    Raises:
        InputError: a source is missing, unreadable, empty, or two documents
            share an id.
    """
    documents: list[dict[str, str]] = []
    seen: set[str] = set()
    for source in sources:
        try:
            found = list(_documents_of_source(source))
        except OSError as err:
            raise InputError(f"cannot read {source!r}: {err}") from err
        for document in found:
            if document["doc_id"] in seen:
                raise InputError(
                    f"document id {document['doc_id']!r} is given twice "
                    f"(again in {source!r}); ids must be unique within a task"
                )
            seen.add(document["doc_id"])
            documents.append(document)
    if not documents:
        raise InputError("no documents found in " + ", ".join(map(repr, sources)))
    return documents


def _documents_of_source(source: str) -> Iterator[dict[str, str]]:
    if source == "-":
        return parse_json_lines(sys.stdin, "<stdin>")
    path = Path(source)
    if path.is_dir():
        return documents_of_folder(path)
    if path.is_file():
        return documents_of_file(path)
    raise InputError(f"{source!r} is neither a file nor a folder")
