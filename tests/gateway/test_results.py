"""Real processors end to end: a RAPTOR tree and a merged graph over HTTP.

The supervisor runs the `raptor` and `graphrag` processors found through their
entry points, against the local OpenAI-compatible fake provider.
"""

from __future__ import annotations

from actors.llm import LocalBackend, OpenAIBackend
from actors.processors import load_processor
from tests.gateway.conftest import running_gateway
from tests.support.fake_llm import FakeLLM
from tests.support.processors import ScriptedProcessor
from tests.support.waiting import eventually

API = "/api/v1"
TEXT = (
    "Ada Lovelace wrote notes on the Analytical Engine. Charles Babbage designed "
    "the Analytical Engine in London. The engine used punched cards. "
) * 12


async def state_of(env, task_id, *states):
    _, body, _ = await env.call("GET", f"{API}/task/{task_id}/checkpoint-status")
    return body if body["state"] in states else None


async def submit(env, type_, n):
    docs = [{"doc_id": f"doc-{i}", "text": f"{TEXT} Part {i}."} for i in range(n)]
    status, body, _ = await env.call(
        "POST", f"{API}/task", json={"type": type_, "documents": docs}
    )
    assert status == 201, body
    return body["task_id"]


async def test_raptor_tree_and_graphrag_graph_fetched_over_http(
    tmp_path, amqp_url, broker_prefix
):
    async with FakeLLM() as fake:
        llm = OpenAIBackend(fake.url, "key", "fake-model", concurrency=8)
        async with running_gateway(
            tmp_path,
            amqp_url,
            broker_prefix,
            ScriptedProcessor(),
            processors=load_processor,
            llm=llm,
        ) as env:
            raptor = await submit(env, "raptor", 3)
            graph = await submit(env, "graphrag", 4)
            done = await eventually(
                lambda: state_of(env, raptor, "completed"), within=60
            )
            assert done["token_count"]["total"] > 0
            assert done["tokens_to_spend"] == 0
            status, body, _ = await env.call(
                "GET", f"{API}/task/{raptor}/documents/doc-1/result"
            )
            assert status == 200
            tree = body["result"]
            assert tree["chunks"] >= 2
            assert len(tree["levels"][-1]) == 1
            assert tree["root"]

            await eventually(lambda: state_of(env, graph, "completed"), within=60)
            history = await env.store.history(graph)
            assert "finalizing" in [h.to_state for h in history]
            status, body, _ = await env.call("GET", f"{API}/task/{graph}/result")
            assert status == 200, body
            assert body["final"] is True
            assert body["documents_merged"] == 4
            names = {e["name"].lower() for e in body["result"]["entities"]}
            assert any("lovelace" in n for n in names)
            status, body, _ = await env.call("GET", f"{API}/task/{raptor}/result")
            assert status == 404
            assert body["error"]["code"] == "no_merged_result"
        await llm.stop()


async def test_local_backend_needs_no_network(tmp_path, amqp_url, broker_prefix):
    llm = LocalBackend()
    async with running_gateway(
        tmp_path,
        amqp_url,
        broker_prefix,
        ScriptedProcessor(),
        processors=load_processor,
        llm=llm,
    ) as env:
        task_id = await submit(env, "graphrag", 2)
        done = await eventually(lambda: state_of(env, task_id, "completed"), within=60)
        assert done["tokens_estimated"] is True
        status, body, _ = await env.call("GET", f"{API}/task/{task_id}/result")
        assert status == 200
        assert body["result"]["entities"]
