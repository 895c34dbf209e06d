"""The LLM client against a local OpenAI-compatible server with injected faults."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time

import pytest

from actors.llm import (
    TASK_SUMMARISE,
    AdaptiveLimiter,
    LocalBackend,
    MalformedResponse,
    OpenAIBackend,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    make_llm,
    parse_retry_after,
    system_message,
)
from actors.processors import PermanentError, TokenLedger, TransientError
from actors.processors.text import sentences
from tests.support.fake_llm import FakeLLM, usage_for

MESSAGES = [
    system_message(TASK_SUMMARISE, "Summarise."),
    {"role": "user", "content": "Alice met Bob in Paris on a rainy day in May."},
]


@pytest.fixture
async def fake():
    async with FakeLLM() as server:
        yield server


@pytest.fixture
async def make_backend(fake):
    made = []

    def make(**options):
        options.setdefault("timeout", 5.0)
        backend = OpenAIBackend(fake.url, "sk-test", "fake-model", **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.stop()


def expected_usage(messages=MESSAGES):
    from tests.support.fake_llm import reply_for

    usage = usage_for(messages, reply_for(messages))
    return usage["prompt_tokens"], usage["completion_tokens"]


async def test_a_reply_and_its_usage_are_recorded_exactly(fake, make_backend):
    ledger = TokenLedger()
    reply = await make_backend().chat(MESSAGES, ledger=ledger)
    assert reply.startswith("summary(11): Alice met Bob")
    assert (ledger.prompt, ledger.completion) == expected_usage()
    assert fake.calls[0].model == "fake-model"


async def test_a_task_picks_a_model_name_and_json_mode_is_sent(fake, make_backend):
    await make_backend().chat(
        MESSAGES, ledger=TokenLedger(), model="other", json_mode=True
    )
    assert fake.calls[0].model == "other"
    assert fake.calls[0].json_mode


async def test_failures_are_classified(fake, make_backend):
    backend = make_backend(timeout=0.3)
    ledger = TokenLedger()
    fake.fail_next = 1
    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        await backend.chat(MESSAGES, ledger=ledger)
    fake.reject_next = 1
    with pytest.raises(ProviderRejected, match="does not exist") as rejected:
        await backend.chat(MESSAGES, ledger=ledger)
    assert isinstance(rejected.value, PermanentError)
    fake.malformed_body_next = 1
    with pytest.raises(MalformedResponse) as malformed:
        await backend.chat(MESSAGES, ledger=ledger)
    assert isinstance(malformed.value, TransientError)
    fake.hang_next, fake.hang_seconds = 1, 1.0
    with pytest.raises(ProviderUnavailable, match="did not answer"):
        await backend.chat(MESSAGES, ledger=ledger)
    assert (ledger.prompt, ledger.completion) == (0, 0)
    await backend.chat(MESSAGES, ledger=ledger)
    assert (ledger.prompt, ledger.completion) == expected_usage()
    assert backend.limiter.in_flight == 0


async def test_an_unreachable_provider_is_transient():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with OpenAIBackend(f"http://127.0.0.1:{port}", None, "m") as backend:
        with pytest.raises(ProviderUnavailable, match="could not be reached"):
            await backend.chat(MESSAGES, ledger=TokenLedger())


async def test_retry_after_in_seconds_is_honoured(fake, make_backend):
    fake.throttle_next, fake.retry_after = 1, "1"
    ledger = TokenLedger()
    started = time.monotonic()
    await make_backend().chat(MESSAGES, ledger=ledger)
    assert time.monotonic() - started >= 0.95
    assert fake.statuses() == [429, 200]
    assert fake.calls[1].at - fake.calls[0].at >= 0.95
    assert (ledger.prompt, ledger.completion) == expected_usage()


async def test_retry_after_as_an_http_date_is_honoured(fake, make_backend):
    fake.throttle_next = 1
    fake.retry_after = email.utils.formatdate(time.time() + 2, usegmt=True)
    await make_backend().chat(MESSAGES, ledger=TokenLedger())
    assert fake.calls[1].at - fake.calls[0].at >= 0.9


async def test_429s_are_retried_a_bounded_number_of_times(fake, make_backend):
    fake.throttle_next, fake.retry_after = 10, "0"
    with pytest.raises(RateLimited) as limited:
        await make_backend(rate_limit_retries=3).chat(MESSAGES, ledger=TokenLedger())
    assert isinstance(limited.value, TransientError)
    assert len(fake.calls) == 4
    fake.throttle_next, fake.retry_after = 1, "120"
    with pytest.raises(RateLimited, match="120"):
        await make_backend(max_retry_wait=30).chat(MESSAGES, ledger=TokenLedger())
    assert len(fake.calls) == 5


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= parse_retry_after(later) <= 61
    earlier = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert parse_retry_after(earlier) == 0.0


async def test_token_totals_are_exact_across_failed_attempts(fake, make_backend):
    backend = make_backend()
    ledger = TokenLedger()
    fake.throttle_next, fake.retry_after = 2, "0"
    await backend.chat(MESSAGES, ledger=ledger)
    fake.fail_next = 1
    with pytest.raises(ProviderUnavailable):
        await backend.chat(MESSAGES, ledger=ledger)
    fake.malformed_content_next = 1
    bad = await backend.chat(MESSAGES, ledger=ledger)
    other = [MESSAGES[0], {"role": "user", "content": "Short."}]
    await backend.chat(other, ledger=ledger)
    prompt, completion = expected_usage()
    bad_usage = usage_for(MESSAGES, bad)
    other_prompt, other_completion = expected_usage(other)
    assert ledger.prompt == prompt + bad_usage["prompt_tokens"] + other_prompt
    assert ledger.completion == (
        completion + bad_usage["completion_tokens"] + other_completion
    )


async def test_embeddings_are_returned_in_order_with_usage(fake, make_backend):
    backend = make_backend(embedding_model="embedder")
    ledger = TokenLedger()
    vectors = await backend.embed(["apple pie", "rocket fuel"], ledger=ledger)
    assert len(vectors) == 2
    assert len(vectors[0]) == 16
    assert ledger.prompt == len("apple pierocket fuel") // 4
    assert await make_backend().embed(["x"], ledger=ledger) is None


async def test_one_limit_is_shared_by_every_caller(fake, make_backend):
    backend = make_backend(concurrency=5)
    fake.latency = 0.02

    async def worker(n):
        for _ in range(n):
            await backend.chat(MESSAGES, ledger=TokenLedger())

    await asyncio.gather(*(worker(6) for _ in range(12)))
    assert fake.most_in_flight == 5
    assert max(c.concurrency for c in fake.calls) == 5
    assert fake.statuses().count(200) == 72


async def test_the_window_halves_on_429_and_grows_back(fake, make_backend):
    backend = make_backend(concurrency=16, grow_after=2, rate_limit_retries=20)
    fake.latency, fake.throttle_above, fake.retry_after = 0.02, 4, "0"
    windows = []

    async def call():
        await backend.chat(MESSAGES, ledger=TokenLedger())
        windows.append(backend.limiter.window)

    await asyncio.gather(*(call() for _ in range(40)))
    assert 429 in fake.statuses()
    assert min(windows) <= 4
    assert backend.limiter.window < 16

    fake.throttle_above = None
    for _ in range(10):
        await asyncio.gather(*(call() for _ in range(16)))
    assert backend.limiter.window == 16
    assert backend.limiter.in_flight == 0


async def test_one_429_burst_halves_the_window_once():
    limiter = AdaptiveLimiter(8)
    slots = [limiter.slot() for _ in range(8)]
    results = [await s.__aenter__() for s in slots]
    for slot, result in zip(slots, results, strict=True):
        result.outcome = "throttled"
        await slot.__aexit__(None, None, None)
    assert limiter.window == 4
    assert limiter.in_flight == 0


async def test_a_cancelled_waiter_leaks_no_slot():
    limiter = AdaptiveLimiter(1)
    async with limiter.slot():
        waiter = asyncio.create_task(_hold(limiter))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert limiter.in_flight == 0
    await asyncio.wait_for(_hold(limiter), 1)


async def _hold(limiter):
    async with limiter.slot() as result:
        result.outcome = "ok"


async def test_the_local_backend_estimates_tokens_and_refuses_untagged_prompts():
    backend = make_llm("local")
    assert backend.estimated
    ledger = TokenLedger()
    text = "Alice met Bob. Bob met Carol. Carol left. Dave stayed. Eve came."
    reply = await backend.chat(
        [system_message(TASK_SUMMARISE, "x"), {"role": "user", "content": text}],
        ledger=ledger,
    )
    kept = sentences(reply)
    assert len(kept) == 3
    assert set(kept) <= set(sentences(text))
    assert ledger.completion == (len(reply) + 3) // 4
    assert ledger.prompt == (len(text) + len("[taskpoint:summarise]\nx") + 3) // 4
    with pytest.raises(ProviderRejected, match="tagged"):
        await backend.chat([{"role": "user", "content": "hi"}], ledger=ledger)
    assert await backend.embed(["x"], ledger=ledger) is None
    assert isinstance(backend, LocalBackend)


def test_make_llm_refuses_what_it_cannot_build():
    with pytest.raises(ValueError, match="unknown LLM backend"):
        make_llm("bard")
    with pytest.raises(ValueError, match="base_url"):
        make_llm("openai", model="m")
    built = make_llm("openai", base_url="http://x/", model="m", concurrency=3)
    assert isinstance(built, OpenAIBackend)
    assert built.base_url == "http://x/v1"
    assert built.limiter.limit == 3
