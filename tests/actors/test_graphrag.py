"""The graphrag processor and the graph merge, through a real Supervisor."""

from __future__ import annotations

import json
import random

import pytest

from actors.llm import LocalBackend
from actors.processors.graphrag import (
    GraphRAGProcessor,
    GraphReplyError,
    entity_key,
    merge_graphs,
    merge_into,
    parse_graph_reply,
)
from store.states import TaskState as T
from tests.store.invariants import assert_counts_exact
from tests.support.fake_llm import Embedded, usage_for

DOCS = {
    "a": "Alice met Bob in Paris. Bob wrote to Carol.",
    "b": "Carol visited Paris with Dave. Alice stayed home.",
    "c": "Dave and Erin founded Acme. Acme hired Alice.",
}


def spent_at(fake):
    prompt = completion = 0
    for call in fake.calls:
        if call.status == 200:
            reply = call.reply
            usage = usage_for(call.messages, reply)
            prompt += usage["prompt_tokens"]
            completion += usage["completion_tokens"]
    return prompt, completion


async def test_each_document_gets_its_graph_and_the_merge_is_checkable(
    tmp_path, backend
):
    processor = GraphRAGProcessor(llm=backend)
    async with Embedded(tmp_path, processor, concurrency=3) as env:
        task = await env.run(DOCS)
        assert task.state in (T.COMPLETED, T.FINALIZING)
        graphs = [await env.store.get_result(task.task_id, d) for d in DOCS]
        await assert_counts_exact(env.store, task.task_id)
    first = graphs[0]
    assert [e["name"] for e in first["entities"]] == ["Alice", "Bob", "Carol", "Paris"]
    assert [(r["source"], r["target"]) for r in first["relations"]] == [
        ("alice", "bob"),
        ("bob", "paris"),
        ("paris", "carol"),
    ]
    merged = merge_graphs(graphs)
    names = [e["key"] for e in merged["entities"]]
    assert names == sorted(names)
    assert set(names) == {"acme", "alice", "bob", "carol", "dave", "erin", "paris"}
    alice = next(e for e in merged["entities"] if e["key"] == "alice")
    assert alice["documents"] == ["a", "b", "c"]
    assert alice["type"] == "thing"
    assert merged["documents"] == 3


async def test_a_malformed_reply_is_repaired_and_its_tokens_counted(
    tmp_path, fake, backend
):
    fake.malformed_content_next = 1
    async with Embedded(tmp_path, GraphRAGProcessor(llm=backend)) as env:
        task = await env.run({"a": DOCS["a"]})
        graph = await env.store.get_result(task.task_id, "a")
    assert task.state is not T.FAILED
    assert len(graph["entities"]) == 4
    assert len(fake.calls) == 2
    repair = fake.calls[1].messages
    assert repair[-2]["role"] == "assistant"
    assert "no JSON object" in repair[-1]["content"]
    assert (task.tokens.prompt, task.tokens.completion) == spent_at(fake)


async def test_a_reply_still_malformed_after_repair_fails_permanently(
    tmp_path, fake, backend
):
    fake.malformed_content_next = 2
    async with Embedded(tmp_path, GraphRAGProcessor(llm=backend)) as env:
        task = await env.run({"a": DOCS["a"]}, max_attempts=3)
        doc = await env.store.get_document(task.task_id, "a")
    assert task.state is T.COMPLETED_WITH_FAILURES
    assert doc.attempts == 1
    assert doc.error.permanent
    assert "even after a repair round" in doc.error.message
    assert "no JSON object in the reply" in doc.error.message
    assert doc.tokens.total > 0
    assert (doc.tokens.prompt, doc.tokens.completion) == spent_at(fake)


def test_the_parser_survives_fences_prose_and_bad_entries():
    reply = 'Here you go:\n```json\n{"entities": [{"name": " Ada  Lovelace "}, '
    reply += '{"type": "x"}, 7], "relations": [{"source": "Ada", "target": ""}]}\n```'
    parsed = parse_graph_reply(reply)
    assert parsed["entities"] == [
        {"name": "Ada Lovelace", "type": "unknown", "description": ""}
    ]
    assert parsed["relations"] == []
    with pytest.raises(GraphReplyError, match="no JSON object"):
        parse_graph_reply("I cannot help with that.")
    with pytest.raises(GraphReplyError, match="'entities' must be a list"):
        parse_graph_reply('{"nodes": []}')
    with pytest.raises(GraphReplyError, match="invalid JSON"):
        parse_graph_reply('{"entities": [}')


def test_entity_names_are_normalised():
    assert entity_key("  Ada  LOVELACE.") == entity_key("ada lovelace")
    assert entity_key("Ａｃｍｅ") == "acme"


def _doc_graph(doc_id, entities, relations):
    from actors.processors.graphrag import graph_from_extraction

    raw = {
        "entities": [
            {"name": n, "type": t, "description": f"{n} in {doc_id}"}
            for n, t in entities
        ],
        "relations": [
            {"source": s, "target": t, "description": f"{s}-{t}"} for s, t in relations
        ],
    }
    return graph_from_extraction(raw, doc_id)


def test_merging_is_deterministic_in_any_order():
    graphs = [
        _doc_graph("d1", [("Alice", "person"), ("ACME", "org")], [("Alice", "ACME")]),
        _doc_graph(
            "d2", [("alice", "person"), ("Acme", "company")], [("alice", "Bob")]
        ),
        _doc_graph("d3", [("Acme", "org"), ("Bob", "person")], [("Bob", "Acme")]),
    ]
    expected = json.dumps(merge_graphs(graphs), sort_keys=True)
    for seed in range(5):
        shuffled = graphs[:]
        random.Random(seed).shuffle(shuffled)
        assert json.dumps(merge_graphs(shuffled), sort_keys=True) == expected
    stepwise = merge_into(merge_into(graphs[2], graphs[0]), graphs[1])
    assert json.dumps(stepwise, sort_keys=True) == expected
    merged = json.loads(expected)
    acme = next(e for e in merged["entities"] if e["key"] == "acme")
    assert acme["name"] == "ACME"
    assert acme["type"] == "org"
    assert acme["type_counts"] == {"company": 1, "org": 2}
    assert acme["documents"] == ["d1", "d2", "d3"]
    bob = next(e for e in merged["entities"] if e["key"] == "bob")
    assert bob["mentions"] == 1
    assert [(r["source"], r["target"]) for r in merged["relations"]] == [
        ("alice", "acme"),
        ("alice", "bob"),
        ("bob", "acme"),
    ]
    assert merged["documents"] == 3


async def test_the_local_backend_extracts_a_graph_end_to_end(tmp_path):
    async with Embedded(tmp_path, GraphRAGProcessor(llm=LocalBackend())) as env:
        task = await env.run(DOCS)
        graphs = [await env.store.get_result(task.task_id, d) for d in DOCS]
    assert task.tokens.prompt > 0
    merged = merge_graphs(graphs)
    keys = {e["key"] for e in merged["entities"]}
    assert {"alice", "bob", "carol", "paris", "acme"} <= keys
    assert ("alice", "bob") in {(r["source"], r["target"]) for r in merged["relations"]}


async def test_no_backend_anywhere_is_a_permanent_error(tmp_path):
    async with Embedded(tmp_path, GraphRAGProcessor()) as env:
        task = await env.run({"a": DOCS["a"]})
        doc = await env.store.get_document(task.task_id, "a")
    assert doc.error.permanent
    assert "no LLM backend" in doc.error.message
