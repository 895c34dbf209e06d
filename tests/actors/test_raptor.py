"""The raptor processor through a real Supervisor, against the fake provider."""

from __future__ import annotations

import itertools

import pytest

from actors.llm import LocalBackend, OpenAIBackend
from actors.processors.raptor import (
    RaptorProcessor,
    adjacent_groups,
    cluster_groups,
    kmeans,
)
from actors.processors.text import sentences
from store.states import TaskState as T
from tests.store.invariants import assert_counts_exact
from tests.support.fake_llm import Embedded, embedding, reply_for, usage_for

APPLES = (
    "Apple orchards grow sweet fruit in autumn. Pickers fill baskets with ripe "
    "apples. The orchard smells of cider and fruit after harvest."
)
ROCKETS = (
    "Rocket engines burn fuel to launch payloads. Engineers test the rocket "
    "engine before launch. Fuel tanks feed the engine during ascent."
)


def spent_at(fake):
    """Tokens the fake reported over all successful calls (prompt, completion)."""
    prompt = completion = 0
    for call in fake.calls:
        if call.status != 200:
            continue
        if call.path == "chat":
            usage = usage_for(call.messages, reply_for(call.messages))
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
    return prompt, completion


def long_text(sentences):
    return "\n\n".join(
        " ".join(f"Sentence {p}.{i} tells about Topic{p} and more." for i in range(4))
        for p in range(sentences // 4)
    )


def assert_tree(tree):
    levels = tree["levels"]
    assert tree["chunks"] == len(levels[0])
    assert all(node["children"] == [] for node in levels[0])
    for below, level in itertools.pairwise(levels):
        children = [c for node in level for c in node["children"]]
        assert sorted(children) == sorted(n["id"] for n in below)
        assert len(level) < len(below) or len(below) == 1
    assert len(levels[-1]) == 1
    assert tree["root"] == levels[-1][0]


async def test_a_task_builds_one_tree_per_document_by_adjacency(
    tmp_path, fake, backend
):
    processor = RaptorProcessor(llm=backend, chunk_size=200, overlap=40, branching=3)
    docs = {f"d{i}": long_text(24 + 4 * i) for i in range(4)}
    async with Embedded(tmp_path, processor, concurrency=4) as env:
        task = await env.run(docs)
        assert task.state is T.COMPLETED
        for doc_id in docs:
            tree = await env.store.get_result(task.task_id, doc_id)
            assert_tree(tree)
            assert tree["chunks"] >= 6
            assert len(tree["levels"]) >= 3
            assert tree["root"]["text"].startswith("summary(")
            in_order = [c for n in tree["levels"][1] for c in n["children"]]
            assert in_order == [n["id"] for n in tree["levels"][0]]
            assert max(len(n["children"]) for n in tree["levels"][1]) <= 3
        assert (task.tokens.prompt, task.tokens.completion) == spent_at(fake)
        await assert_counts_exact(env.store, task.task_id)
    assert not [c for c in fake.calls if c.path == "embeddings"]


async def test_embeddings_group_chunks_by_topic(tmp_path, fake):
    text = "\n\n".join(APPLES if i % 2 == 0 else ROCKETS for i in range(8))
    async with OpenAIBackend(
        fake.url, None, "fake-model", embedding_model="embedder"
    ) as backend:
        processor = RaptorProcessor(llm=backend, chunk_size=240, overlap=0)
        async with Embedded(tmp_path, processor) as env:
            task = await env.run({"mixed": text})
            tree = await env.store.get_result(task.task_id, "mixed")
    assert_tree(tree)
    assert tree["chunks"] == 8
    leaves = {n["id"]: n["text"] for n in tree["levels"][0]}
    level = tree["levels"][1]
    assert len(level) == 2
    for node in level:
        topics = {leaves[c][:5] for c in node["children"]}
        assert len(topics) == 1, node["children"]
    assert len([c for c in fake.calls if c.path == "embeddings"]) == 1
    embedded = sum(len(t) for t in leaves.values()) // 4
    prompt, completion = spent_at(fake)
    assert (task.tokens.prompt, task.tokens.completion) == (
        prompt + embedded,
        completion,
    )


async def test_uris_are_read_and_bad_ones_fail_permanently(tmp_path, backend):
    source = tmp_path / "doc.txt"
    source.write_text(long_text(12), encoding="utf-8")
    processor = RaptorProcessor(llm=backend, chunk_size=200, overlap=0)
    async with Embedded(tmp_path, processor) as env:
        task = await env.run(
            {
                "file": source.as_uri(),
                "missing": (tmp_path / "nope.txt").as_uri(),
                "ftp": "ftp://example.com/doc.txt",
            }
        )
        assert task.state is T.COMPLETED_WITH_FAILURES
        assert_tree(await env.store.get_result(task.task_id, "file"))
        ftp = await env.store.get_document(task.task_id, "ftp")
        assert ftp.error.permanent
        assert "unsupported URI scheme 'ftp'" in ftp.error.message
        missing = await env.store.get_document(task.task_id, "missing")
        assert missing.attempts == 1
        assert "cannot read" in missing.error.message


async def test_a_provider_outage_is_retried_and_counted(tmp_path, fake, backend):
    processor = RaptorProcessor(llm=backend, chunk_size=200, overlap=0)
    fake.fail_next = 2
    async with Embedded(tmp_path, processor, concurrency=1) as env:
        task = await env.run(
            {"only": long_text(8)}, max_attempts=3, backoff_base=0.05, backoff_cap=0.1
        )
        assert task.state is T.COMPLETED
        doc = await env.store.get_document(task.task_id, "only")
        assert doc.attempts == 3
        assert [a.outcome for a in doc.attempt_log] == [
            "retry_wait",
            "retry_wait",
            "completed",
        ]
        assert (task.tokens.prompt, task.tokens.completion) == spent_at(fake)


async def test_the_local_backend_runs_raptor_end_to_end(tmp_path):
    processor = RaptorProcessor(llm=LocalBackend(), chunk_size=200, overlap=0)
    text = long_text(16)
    async with Embedded(tmp_path, processor) as env:
        task = await env.run({"local": text})
        tree = await env.store.get_result(task.task_id, "local")
    assert_tree(tree)
    assert tree["root"]["text"]
    assert set(sentences(tree["root"]["text"])) <= set(sentences(text))
    assert task.tokens.prompt > len(text) // 4
    assert task.tokens.completion > 0


def test_grouping_helpers_are_balanced_and_deterministic():
    assert adjacent_groups(9, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert adjacent_groups(2, 4) == [[0, 1]]
    vectors = [embedding(APPLES if i % 3 else ROCKETS) for i in range(9)]
    assert kmeans(vectors, 2) == kmeans(vectors, 2)
    groups = cluster_groups(vectors, 2, 4)
    assert sorted(i for g in groups for i in g) == list(range(9))
    assert max(len(g) for g in groups) <= 4
    assert [0, 3, 6] in groups


def test_a_processor_without_a_backend_fails_clearly():
    with pytest.raises(ValueError, match="branching"):
        RaptorProcessor(branching=1)


async def test_http_documents_are_fetched_with_a_size_limit(tmp_path, backend):
    from aiohttp import web

    from actors.processors import text as text_module

    async def doc(_):
        return web.Response(text=long_text(8))

    async def big(_):
        return web.Response(text="x" * 4096)

    app = web.Application()
    app.router.add_get("/doc", doc)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    limit = text_module.MAX_DOCUMENT_BYTES
    text_module.MAX_DOCUMENT_BYTES = 2048
    try:
        processor = RaptorProcessor(llm=backend, chunk_size=200, overlap=0)
        async with Embedded(tmp_path, processor) as env:
            task = await env.run(
                {
                    "doc": f"http://127.0.0.1:{port}/doc",
                    "big": f"http://127.0.0.1:{port}/big",
                    "gone": f"http://127.0.0.1:{port}/gone",
                }
            )
            assert_tree(await env.store.get_result(task.task_id, "doc"))
            big = await env.store.get_document(task.task_id, "big")
            gone = await env.store.get_document(task.task_id, "gone")
    finally:
        text_module.MAX_DOCUMENT_BYTES = limit
        await runner.cleanup()
    assert "larger than 2048 bytes" in big.error.message
    assert big.error.permanent
    assert "HTTP 404" in gone.error.message
    assert gone.error.permanent


async def test_a_task_picks_its_model_from_its_config(tmp_path, fake, backend):
    processor = RaptorProcessor(llm=backend, chunk_size=200, overlap=40, branching=3)
    async with Embedded(tmp_path, processor, concurrency=2) as env:
        task = await env.run({"d0": long_text(12)}, model="small-model:7b")
        assert task.state is T.COMPLETED
    chats = [c for c in fake.calls if c.path != "embeddings"]
    assert chats
    assert {c.model for c in chats} == {"small-model:7b"}
