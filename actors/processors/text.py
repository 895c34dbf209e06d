"""Text helpers shared by the processors: sentences, chunks, word counts.

Splitting is heuristic (blank lines for paragraphs, end punctuation followed
by a space and a capital or digit for sentences); it needs no language model
and no third-party library.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from actors.processors.base import PermanentError, ProcessorContext, TransientError

MAX_DOCUMENT_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT = 60.0

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")

_STOPWORD_TEXT = """a about above after again against all also am an and any are as
    at be
    because been before being below between both but by can could did do does
    doing down during each few for from further had has have having he her here
    hers him his how i if in into is it its itself just me more most my no nor
    not of off on once only or other our ours out over own same she should so
    some such than that the their theirs them then there these they this those
    through to too under until up very was we were what when where which while
    who whom why will with would you your yours"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def paragraphs(text: str) -> list[str]:
    """Return the non-empty paragraphs of ``text``, whitespace collapsed."""
    found = (" ".join(p.split()) for p in _PARAGRAPH.split(text))
    return [p for p in found if p]


def sentences(text: str) -> list[str]:
    """Return the sentences of ``text``, paragraph by paragraph."""
    return [s for p in paragraphs(text) for s in _SENTENCE_END.split(p) if s]


def chunk_text(text: str, size: int = 1200, overlap: int = 150) -> list[str]:
    """Split ``text`` into chunks of at most ``size`` characters.

    Chunks are whole sentences packed in order, starting a new chunk at a
    paragraph break when the current one is at least half full. Each chunk
    after the first starts with the last sentences of the one before, up to
    ``overlap`` characters. A sentence longer than ``size`` is cut at spaces.

    Raises:
        ValueError: ``overlap`` is not smaller than ``size``.
    """
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap!r} must be in [0, size {size!r})")
    chunks: list[str] = []
    current: list[str] = []
    fresh = 0  # units in ``current`` that are not overlap from the last chunk
    for paragraph in paragraphs(text):
        if fresh and _length(current) >= size // 2:
            current, fresh = _flush(chunks, current, overlap), 0
        for unit in _units(paragraph, size):
            if fresh and _length(current) + 1 + len(unit) > size:
                current, fresh = _flush(chunks, current, overlap), 0
            while current and _length(current) + 1 + len(unit) > size:
                current.pop(0)
            current.append(unit)
            fresh += 1
    if fresh:
        chunks.append(" ".join(current))
    return chunks


def word_counts(text: str) -> Counter[str]:
    """Count the content words of ``text``, lowercased, stopwords left out."""
    words = (w.lower() for w in _WORD.findall(text))
    return Counter(w for w in words if w not in STOPWORDS)


def _units(paragraph: str, size: int) -> list[str]:
    units: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph):
        units.extend(_cut(sentence, size) if len(sentence) > size else [sentence])
    return [u for u in units if u]


def _cut(sentence: str, size: int) -> list[str]:
    pieces: list[str] = []
    while len(sentence) > size:
        at = sentence.rfind(" ", 0, size + 1)
        at = at if at > 0 else size
        pieces.append(sentence[:at].strip())
        sentence = sentence[at:].strip()
    pieces.append(sentence)
    return pieces


def _flush(chunks: list[str], current: list[str], overlap: int) -> list[str]:
    chunks.append(" ".join(current))
    tail: list[str] = []
    for unit in reversed(current):
        if _length([unit, *tail]) > overlap:
            break
        tail.insert(0, unit)
    return tail


def _length(units: list[str]) -> int:
    return sum(len(u) for u in units) + max(len(units) - 1, 0)


async def document_text(ctx: ProcessorContext, *, max_bytes: int | None = None) -> str:
    """Return the document's text: inline, or read from its URI.

    ``file://`` URIs are read from the local disk, ``http(s)://`` URIs are
    fetched; either is refused above ``max_bytes`` (by default
    :data:`MAX_DOCUMENT_BYTES`).

    Raises:
        PermanentError: an unsupported scheme, a missing file, an HTTP 4xx, a
            document too large, or bytes that are not UTF-8.
        TransientError: the server failed (5xx) or could not be reached.
    """
    content = await ctx.content()
    if content.text is not None:
        return content.text
    uri = content.uri or ""
    max_bytes = MAX_DOCUMENT_BYTES if max_bytes is None else max_bytes
    scheme = urlsplit(uri).scheme.lower()
    if scheme == "file":
        data = await ctx.run_cpu(_read_file, uri, max_bytes)
    elif scheme in ("http", "https"):
        data = await _fetch(uri, max_bytes)
    else:
        raise PermanentError(
            f"document {ctx.doc_id!r}: unsupported URI scheme {scheme!r} in "
            f"{uri!r}; use text, file://, http:// or https://"
        )
    return _decoded(uri, data)


def _read_file(uri: str, max_bytes: int) -> bytes:
    path = Path(unquote(urlsplit(uri).path))
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise PermanentError(f"cannot read {uri!r}: {err}") from err
    if len(data) > max_bytes:
        raise PermanentError(f"{uri!r} is larger than {max_bytes} bytes")
    return data


async def _fetch(uri: str, max_bytes: int) -> bytes:
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(uri) as response,
        ):
            _check_status(uri, response.status)
            data = bytearray()
            async for piece in response.content.iter_chunked(64 * 1024):
                data += piece
                if len(data) > max_bytes:
                    raise PermanentError(f"{uri!r} is larger than {max_bytes} bytes")
    except (aiohttp.ClientError, TimeoutError) as err:
        raise TransientError(f"cannot fetch {uri!r}: {err!r}") from err
    return bytes(data)


def _check_status(uri: str, status: int) -> None:
    if status >= 500 or status == 429:
        raise TransientError(f"fetching {uri!r} failed with HTTP {status}")
    if status >= 400:
        raise PermanentError(f"fetching {uri!r} was refused with HTTP {status}")


def _decoded(uri: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PermanentError(f"{uri!r} is not UTF-8 text: {err}") from err
