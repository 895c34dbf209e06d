"""The LLM client that processors share: chat and embeddings, with token counts.

Two backends stand behind one :class:`LLMBackend` protocol:

- :class:`OpenAIBackend` talks to any OpenAI-compatible endpoint (hosted,
  vLLM, Ollama) over aiohttp. It records the provider's ``usage`` for every
  call that returned one, classifies failures as transient or permanent, and
  keeps the calls in flight under an adaptive limit shared by every worker of
  the process.
- :class:`LocalBackend` needs no network: an extractive summariser and a
  heuristic entity extractor. It is an approximation, and says so: its token
  counts are estimates (``estimated = True``).

Processors say what a chat request is for with a task tag on the first line of
the system message (:func:`system_message`). A real model reads the tag as
harmless text; the local backend dispatches on it.

A task may choose a model by name (``model=``), never an endpoint: the URL and
the key come from the process's settings.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import time
from collections import deque
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import aiohttp

from actors.processors import local
from actors.processors.base import (
    PermanentError,
    ProcessorContext,
    TokenLedger,
    TransientError,
)

logger = logging.getLogger(__name__)

TASK_SUMMARISE = "summarise"
TASK_EXTRACT_GRAPH = "extract-graph"
_TAG = re.compile(r"^\[taskpoint:([a-z-]+)\]")

Messages = list[dict[str, str]]


class ProviderUnavailable(TransientError):
    """The provider timed out, failed (5xx) or could not be reached."""


class RateLimited(ProviderUnavailable):
    """The provider kept answering 429 after the allowed in-call retries."""


class MalformedResponse(ProviderUnavailable):
    """The provider's response body was not the JSON the API promises."""


class ProviderRejected(PermanentError):
    """The provider refused the request (a 4xx other than 429)."""


@runtime_checkable
class LLMBackend(Protocol):
    """What processors call: chat completions and embeddings.

    Attributes:
        estimated: True when the token counts recorded are estimates rather
            than the provider's own figures.
    """

    estimated: bool

    async def chat(
        self,
        messages: Messages,
        *,
        ledger: TokenLedger,
        model: str | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
    ) -> str:
        """Return the reply to ``messages``; record the tokens in ``ledger``.

        Raises:
            TransientError: the call may succeed later.
            PermanentError: the request cannot succeed.
        """
        ...

    async def embed(
        self, texts: list[str], *, ledger: TokenLedger
    ) -> list[list[float]] | None:
        """Return one vector per text, or None when no embedding model is set."""
        ...

    async def stop(self) -> None:
        """Close connections; the backend may not be used afterwards."""
        ...


def system_message(task: str, instructions: str) -> dict[str, str]:
    """Return a system message tagged with what the request is for."""
    return {"role": "system", "content": f"[taskpoint:{task}]\n{instructions}"}


def task_of(messages: Messages) -> str | None:
    """Return the task tag of a conversation's system message, if any."""
    for message in messages:
        if message.get("role") == "system":
            found = _TAG.match(message.get("content", ""))
            return found.group(1) if found else None
    return None


class AdaptiveLimiter:
    """Bounds the calls in flight to a provider, adapting to its 429s (AIMD).

    The window starts at ``limit``. A 429 halves it (never below 1), once per
    window: the calls that were already in flight when it shrank do not shrink
    it again. Every ``grow_after`` successes it grows by one, back up to
    ``limit``. Waiters are woken in arrival order; all bookkeeping is
    synchronous, so a cancelled caller can never leak a slot.

    Args:
        limit: the most calls in flight, as set for the provider.
        grow_after: successes needed to widen the window by one.
    """

    def __init__(self, limit: int, *, grow_after: int = 10) -> None:
        if limit < 1:
            raise ValueError(f"concurrency limit {limit!r} must be at least 1")
        self.limit = limit
        self.window = limit
        self.in_flight = 0
        self.grow_after = max(1, grow_after)
        self._successes = 0
        self._epoch = 0
        self._hold_until = 0.0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def slot(self) -> Any:
        """Hold one slot for the body; yields a :class:`SlotResult` to fill."""
        epoch = await self._acquire()
        result = SlotResult()
        try:
            yield result
        finally:
            self._release(epoch, result.outcome)

    def hold(self, seconds: float) -> None:
        """Start no call for ``seconds`` (the provider asked us to wait)."""
        until = time.monotonic() + seconds
        self._hold_until = max(self._hold_until, until)

    async def _acquire(self) -> int:
        wait = self._hold_until - time.monotonic()
        if wait > 0:
            # A hold extended meanwhile is not waited for again: the call that
            # meets another 429 holds back on its own.
            await asyncio.sleep(wait)
        if self.in_flight < self.window and not self._waiters:
            self.in_flight += 1
            return self._epoch
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(self._epoch, "error")  # handed a slot, give it back
            else:
                self._waiters.remove(waiter)
            raise
        return self._epoch

    def _release(self, epoch: int, outcome: str) -> None:
        self.in_flight -= 1
        if outcome == "throttled" and epoch == self._epoch:
            self.window = max(1, self.window // 2)
            self._epoch += 1
            self._successes = 0
            logger.warning("provider throttled, concurrency window=%d", self.window)
        elif outcome == "ok" and self.window < self.limit:
            self._successes += 1
            if self._successes >= self.grow_after:
                self.window += 1
                self._successes = 0
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.window:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


class SlotResult:
    """How the call that held a limiter slot went: ok, throttled or error."""

    def __init__(self) -> None:
        self.outcome = "error"


class OpenAIBackend:
    """An OpenAI-compatible endpoint over aiohttp.

    Every call that returned ``usage`` is recorded in the ledger, also when
    the reply turns out unusable afterwards. Timeouts, connection errors, 5xx
    and malformed bodies raise :class:`ProviderUnavailable` (transient); a 429
    is retried in the call after its ``Retry-After`` (at most
    ``rate_limit_retries`` times, and only when the wait is at most
    ``max_retry_wait``), then raises :class:`RateLimited`; any other 4xx raises
    :class:`ProviderRejected` (permanent) with the provider's message.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1``; ``/v1`` is
            appended when missing.
        api_key: sent as a bearer token; None sends no Authorization header.
        model: the chat model used when a call names none.
        embedding_model: the embedding model; None disables :meth:`embed`.
        concurrency: the most calls in flight (see :class:`AdaptiveLimiter`).
        timeout: seconds one HTTP request may take.
        rate_limit_retries: 429s retried inside one call.
        max_retry_wait: the longest ``Retry-After`` waited for inside a call.
        grow_after: successes that widen the concurrency window by one.
    """

    estimated = False

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        model: str,
        embedding_model: str | None = None,
        *,
        concurrency: int = 8,
        timeout: float = 60.0,
        rate_limit_retries: int = 3,
        max_retry_wait: float = 30.0,
        grow_after: int = 10,
    ) -> None:
        root = base_url.rstrip("/")
        self.base_url = root if root.endswith("/v1") else f"{root}/v1"
        self.api_key = api_key
        self.model = model
        self.embedding_model = embedding_model
        self.timeout = timeout
        self.rate_limit_retries = rate_limit_retries
        self.max_retry_wait = max_retry_wait
        self.limiter = AdaptiveLimiter(concurrency, grow_after=grow_after)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OpenAIBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the HTTP session; a later call opens a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def chat(
        self,
        messages: Messages,
        *,
        ledger: TokenLedger,
        model: str | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
    ) -> str:
        """Return the first choice's content; see :class:`LLMBackend`."""
        body: dict[str, Any] = {"model": model or self.model, "messages": messages}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        reply = await self._call("chat/completions", body, ledger)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise MalformedResponse(
                f"chat reply from {self.base_url!r} has no choices[0].message"
                f".content: {_clip(reply)}"
            ) from err
        if not isinstance(content, str):
            raise MalformedResponse(f"chat content is not text: {content!r:.200}")
        return content

    async def embed(
        self, texts: list[str], *, ledger: TokenLedger
    ) -> list[list[float]] | None:
        """Return one vector per text, or None without an embedding model."""
        if self.embedding_model is None or not texts:
            return None if self.embedding_model is None else []
        body = {"model": self.embedding_model, "input": texts}
        reply = await self._call("embeddings", body, ledger)
        try:
            rows = sorted(reply["data"], key=lambda row: row["index"])
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError) as err:
            raise MalformedResponse(
                f"embeddings reply has no data[].embedding: {_clip(reply)}"
            ) from err
        if len(vectors) != len(texts):
            raise MalformedResponse(
                f"asked for {len(texts)} embeddings, got {len(vectors)}"
            )
        return vectors

    async def _call(
        self, path: str, body: dict[str, Any], ledger: TokenLedger
    ) -> dict[str, Any]:
        for retry in range(self.rate_limit_retries + 1):
            async with self.limiter.slot() as slot:
                status, headers, reply = await self._post(path, body)
                _record_usage(reply, ledger)
                if status == 429:
                    slot.outcome = "throttled"
                    wait = self._rate_limit_wait(headers, retry)
                else:
                    slot.outcome = "ok" if status < 400 else "error"
                    return self._checked(status, reply)
            if retry == self.rate_limit_retries or wait > self.max_retry_wait:
                break
            logger.warning("provider answered 429, retrying in %.2fs", wait)
            self.limiter.hold(wait)
            await asyncio.sleep(wait)
        raise RateLimited(
            f"{self.base_url!r} answered 429 (Retry-After {wait:.1f}s) after "
            f"{retry} retries"
        )

    async def _post(
        self, path: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, str], dict[str, Any] | str]:
        url = f"{self.base_url}/{path}"
        try:
            async with self._open().post(url, json=body) as response:
                text = await response.text()
                return response.status, dict(response.headers), _decode(text)
        except TimeoutError as err:
            raise ProviderUnavailable(
                f"{url!r} did not answer within {self.timeout}s"
            ) from err
        except aiohttp.ClientError as err:
            raise ProviderUnavailable(f"{url!r} could not be reached: {err}") from err

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._session = aiohttp.ClientSession(
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._session

    def _checked(self, status: int, reply: dict[str, Any] | str) -> dict[str, Any]:
        if status >= 500:
            raise ProviderUnavailable(
                f"{self.base_url!r} failed with HTTP {status}: {_message(reply)}"
            )
        if status >= 400:
            raise ProviderRejected(
                f"{self.base_url!r} refused the request with HTTP {status}: "
                f"{_message(reply)}"
            )
        if not isinstance(reply, dict):
            raise MalformedResponse(
                f"{self.base_url!r} answered HTTP {status} with a body that is "
                f"not a JSON object: {reply[:200]!r}"
            )
        return reply

    def _rate_limit_wait(self, headers: dict[str, str], retry: int) -> float:
        given = parse_retry_after(headers.get("Retry-After"))
        return given if given is not None else min(0.5 * 2.0**retry, 8.0)


class LocalBackend:
    """No network: an extractive summariser and a heuristic entity extractor.

    This is an approximation for laptops and walk-throughs, not a language
    model. Summaries are the document's own most representative sentences
    (by word frequency); entities are capitalised phrases, and two entities
    are related when they appear in the same sentence. Token counts are
    estimates (about four characters per token), hence ``estimated = True``.

    Args:
        summary_sentences: sentences kept in a summary.
    """

    estimated = True

    def __init__(self, summary_sentences: int = 3) -> None:
        self.summary_sentences = summary_sentences

    async def stop(self) -> None:
        """Nothing to close; here so that both backends stop the same way."""

    async def chat(
        self,
        messages: Messages,
        *,
        ledger: TokenLedger,
        model: str | None = None,
        max_tokens: int | None = None,
        json_mode: bool = False,
    ) -> str:
        """Answer a tagged request locally; see :class:`LLMBackend`.

        Raises:
            ProviderRejected: the request carries no task tag this backend
                knows (it cannot answer free-form prompts).
        """
        task = task_of(messages)
        text = _first_user_text(messages)
        if task == TASK_SUMMARISE:
            reply = local.summarise(text, self.summary_sentences)
        elif task == TASK_EXTRACT_GRAPH:
            reply = json.dumps(local.extract_graph(text), sort_keys=True)
        else:
            raise ProviderRejected(
                f"the local backend answers only tagged requests "
                f"({TASK_SUMMARISE!r}, {TASK_EXTRACT_GRAPH!r}); got {task!r}"
            )
        prompt = sum(len(m.get("content", "")) for m in messages)
        ledger.add(estimate_tokens(prompt), estimate_tokens(len(reply)))
        await asyncio.sleep(0)
        return reply

    async def embed(
        self, texts: list[str], *, ledger: TokenLedger
    ) -> list[list[float]] | None:
        """Return None: the local backend has no embedding model."""
        return None


def make_llm(
    backend: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
    embedding_model: str | None = None,
    concurrency: int = 8,
    timeout: float = 60.0,
) -> LLMBackend:
    """Return the backend named ``backend``: ``openai`` or ``local``.

    Raises:
        ValueError: an unknown backend, or ``openai`` without a URL or model.
    """
    if backend == "local":
        return LocalBackend()
    if backend != "openai":
        raise ValueError(f"unknown LLM backend {backend!r}; use 'openai' or 'local'")
    if not base_url or not model:
        raise ValueError(
            f"the 'openai' backend needs a base_url and a model; got "
            f"base_url={base_url!r} model={model!r}"
        )
    return OpenAIBackend(
        base_url,
        api_key,
        model,
        embedding_model,
        concurrency=concurrency,
        timeout=timeout,
    )


def estimate_tokens(characters: int) -> int:
    """Estimate the tokens of ``characters`` characters of English text."""
    return (characters + 3) // 4


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for, or None.

    The header holds either a number of seconds or an HTTP date.
    """
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _record_usage(reply: dict[str, Any] | str, ledger: TokenLedger) -> None:
    usage = reply.get("usage") if isinstance(reply, dict) else None
    if not isinstance(usage, dict):
        return
    prompt = usage.get("prompt_tokens", 0)
    completion = usage.get("completion_tokens", 0)
    if isinstance(prompt, int) and isinstance(completion, int):
        ledger.add(max(prompt, 0), max(completion, 0))


def _decode(text: str) -> dict[str, Any] | str:
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, dict) else text


def _message(reply: dict[str, Any] | str) -> str:
    if isinstance(reply, dict):
        error = reply.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return _clip(reply)


def _clip(reply: object) -> str:
    return repr(reply)[:300]


def _first_user_text(messages: Messages) -> str:
    return next(_user_texts(messages), "")


def _user_texts(messages: Messages) -> Iterator[str]:
    for message in messages:
        if message.get("role") == "user":
            yield message.get("content", "")


def backend_for(ctx: ProcessorContext, injected: LLMBackend | None) -> LLMBackend:
    """Return the backend a processor uses: the context's, else its own.

    Raises:
        PermanentError: neither the worker nor the processor has a backend.
    """
    if ctx.llm is not None:
        return ctx.llm
    if injected is not None:
        return injected
    raise PermanentError(
        f"task {ctx.task.task_id!r} of type {ctx.task.type!r}: no LLM backend is "
        f"configured in this process"
    )
