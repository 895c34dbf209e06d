"""The ``graphrag`` processor: a knowledge graph per document, and the merge.

Each chunk of a document goes to the LLM with a prompt asking for JSON::

    {"entities": [{"name", "type", "description"}],
     "relations": [{"source", "target", "description"}]}

A reply that is not such an object gets one repair round (the bad reply is
sent back with what was wrong); a second bad reply fails the document with a
:class:`PermanentError` naming the fault. Chunk graphs are merged into the
document's graph with :func:`merge_graphs`, the same function the task's
finalize phase uses to merge document graphs into the task's graph.

A merged graph is deterministic: entities sorted by key, relations by
(source, target), lists sorted, so merging the same graphs in any order gives
the same JSON::

    {"entities": [{"key", "name", "type", "type_counts", "descriptions",
                   "documents", "mentions"}],
     "relations": [{"source", "target", "descriptions", "documents",
                    "weight"}],
     "documents": <number of document graphs merged>}

``source`` and ``target`` are entity keys (see :func:`entity_key`). Lists of
descriptions and of documents keep their first ``MAX_LISTED`` values in sort
order (order-independent, unlike first-come); ``mentions`` and ``weight``
count everything.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from actors.llm import TASK_EXTRACT_GRAPH, LLMBackend, backend_for, system_message
from actors.processors.base import PermanentError, ProcessorContext, run_all
from actors.processors.text import chunk_text, document_text

logger = logging.getLogger(__name__)

CHUNK_SIZE = 2000
CHUNK_OVERLAP = 200
EXTRACT_TOKENS = 1500
MAX_LISTED = 20
MAX_NAME = 200
MAX_DESCRIPTION = 1000

Graph = dict[str, Any]

EXTRACT_INSTRUCTIONS = (
    "Extract the named entities of the text in the user message and the "
    "relations between them. Reply with one JSON object and nothing else: "
    '{"entities": [{"name": str, "type": str, "description": str}], '
    '"relations": [{"source": entity name, "target": entity name, '
    '"description": str}]}. Types are short lowercase nouns such as person, '
    "organisation, place, event, concept."
)
REPAIR_REQUEST = (
    "Your reply could not be used: {fault}. Reply again with only the JSON "
    'object {{"entities": [...], "relations": [...]}}, no prose and no code '
    "fences."
)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_SPACE = re.compile(r"\s+")


class GraphReplyError(ValueError):
    """A model's reply is not the graph JSON that was asked for."""


class GraphRAGProcessor:
    """Extracts a knowledge graph from each document.

    Args:
        llm: the backend to use when the worker's context carries none; the
            context's backend wins when both are set.
        chunk_size: the most characters sent in one extraction request.
        overlap: characters a chunk repeats from the one before.
    """

    name = "graphrag"

    def __init__(
        self,
        llm: LLMBackend | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
        overlap: int = CHUNK_OVERLAP,
    ) -> None:
        self.llm = llm
        self.chunk_size = chunk_size
        self.overlap = overlap

    def merge(
        self, base: dict[str, Any] | None, results: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Merge documents' graphs into the task's graph (the finalize phase).

        Deterministic and order-free, so merging batch by batch gives the
        graph that one merge of everything would.
        """
        return merge_graphs([base, *results] if base else results)

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        """Return the document's graph (see the module's docstring).

        Raises:
            PermanentError: the document has no text, cannot be read, or the
                model's reply stayed malformed after the repair round.
            TransientError: the provider failed; the attempt may be retried.
        """
        llm = backend_for(ctx, self.llm)
        text = await document_text(ctx)
        chunks = await ctx.run_cpu(chunk_text, text, self.chunk_size, self.overlap)
        if not chunks:
            raise PermanentError(f"document {ctx.doc_id!r} has no text to extract")
        extracted = await run_all(
            self._extract(ctx, llm, index, chunk) for index, chunk in enumerate(chunks)
        )
        graphs = [graph_from_extraction(raw, ctx.doc_id) for raw in extracted]
        return await ctx.run_cpu(merge_graphs, graphs, documents=1)

    async def _extract(
        self, ctx: ProcessorContext, llm: LLMBackend, index: int, chunk: str
    ) -> Graph:
        messages = [
            system_message(TASK_EXTRACT_GRAPH, EXTRACT_INSTRUCTIONS),
            {"role": "user", "content": chunk},
        ]
        reply = await self._ask(ctx, llm, messages)
        try:
            return parse_graph_reply(reply)
        except GraphReplyError as fault:
            logger.warning(
                "malformed graph reply, asking for a repair task_id=%s doc_id=%s "
                "chunk=%d: %s",
                ctx.task.task_id,
                ctx.doc_id,
                index,
                fault,
            )
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": REPAIR_REQUEST.format(fault=fault)},
            ]
        repaired = await self._ask(ctx, llm, messages)
        try:
            return parse_graph_reply(repaired)
        except GraphReplyError as fault:
            raise PermanentError(
                f"document {ctx.doc_id!r} chunk {index}: the model's reply is not "
                f"a graph even after a repair round: {fault}"
            ) from fault

    async def _ask(
        self, ctx: ProcessorContext, llm: LLMBackend, messages: list[dict[str, str]]
    ) -> str:
        return await llm.chat(
            messages,
            ledger=ctx.tokens,
            max_tokens=EXTRACT_TOKENS,
            json_mode=True,
            model=ctx.task.config.model,
        )


def parse_graph_reply(reply: str) -> Graph:
    """Return ``{"entities": [...], "relations": [...]}`` read from a reply.

    Code fences and prose around the outermost ``{...}`` are tolerated, and so
    are entries without a usable name (they are dropped). A reply that holds no
    JSON object, or one without an ``entities`` list, is not.

    Raises:
        GraphReplyError: what is wrong with the reply, in words.
    """
    decoded = _json_object(reply)
    entities = decoded.get("entities")
    relations = decoded.get("relations", [])
    if not isinstance(entities, list):
        raise GraphReplyError(
            f"'entities' must be a list, got {type(entities).__name__} "
            f"(keys: {sorted(decoded)!r})"
        )
    if not isinstance(relations, list):
        raise GraphReplyError(
            f"'relations' must be a list, got {type(relations).__name__}"
        )
    return {
        "entities": [e for e in map(_entity_item, entities) if e],
        "relations": [r for r in map(_relation_item, relations) if r],
    }


def _json_object(reply: str) -> dict[str, Any]:
    text = _FENCE.sub("", reply.strip())
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise GraphReplyError(f"no JSON object in the reply: {reply[:120]!r}")
    try:
        decoded = json.loads(text[start : end + 1])
    except ValueError as err:
        raise GraphReplyError(f"invalid JSON ({err}): {reply[:120]!r}") from err
    if not isinstance(decoded, dict):
        raise GraphReplyError("the reply's JSON is not an object")
    return decoded


def _entity_item(item: Any) -> dict[str, str] | None:
    if not isinstance(item, dict) or not _text(item.get("name")):
        return None
    return {
        "name": _text(item.get("name"))[:MAX_NAME],
        "type": _text(item.get("type")).lower() or "unknown",
        "description": _text(item.get("description"))[:MAX_DESCRIPTION],
    }


def _relation_item(item: Any) -> dict[str, str] | None:
    if not isinstance(item, dict):
        return None
    source, target = _text(item.get("source")), _text(item.get("target"))
    if not source or not target:
        return None
    return {
        "source": source[:MAX_NAME],
        "target": target[:MAX_NAME],
        "description": _text(item.get("description"))[:MAX_DESCRIPTION],
    }


def _text(value: Any) -> str:
    return _SPACE.sub(" ", value).strip() if isinstance(value, str) else ""


def entity_key(name: str) -> str:
    """Return the key that names of one entity share.

    Unicode-normalised (NFKC), case-folded, whitespace collapsed, and
    surrounding quotes and punctuation dropped: ``"  Ada  LOVELACE."`` and
    ``"ada lovelace"`` are one entity.
    """
    name = unicodedata.normalize("NFKC", name)
    return _SPACE.sub(" ", name).strip(" \t\"'`.,;:()[]{}").casefold()


def graph_from_extraction(raw: Graph, doc_id: str) -> Graph:
    """Turn one parsed extraction into a graph in the merged form."""
    merger = _Merger()
    merger.add_extraction(raw, doc_id)
    return merger.graph()


def merge_graphs(graphs: Iterable[Graph], *, documents: int | None = None) -> Graph:
    """Merge graphs in the merged form into one; the order does not matter.

    Args:
        graphs: graphs as this module returns them.
        documents: the ``documents`` count of the result; by default the sum
            of the graphs' own counts.
    """
    merger = _Merger()
    for graph in graphs:
        merger.add_graph(graph)
    if documents is not None:
        merger.documents = documents
    return merger.graph()


def merge_into(base: Graph, graph: Graph) -> Graph:
    """Return ``base`` with ``graph`` merged in (neither is changed)."""
    return merge_graphs([base, graph])


@dataclass
class _Entity:
    name: str
    type_counts: Counter[str] = field(default_factory=Counter)
    descriptions: set[str] = field(default_factory=set)
    documents: set[str] = field(default_factory=set)
    mentions: int = 0


@dataclass
class _Relation:
    descriptions: set[str] = field(default_factory=set)
    documents: set[str] = field(default_factory=set)
    weight: int = 0


class _Merger:
    """Accumulates graphs; every step is commutative, so order cannot matter."""

    def __init__(self) -> None:
        self.entities: dict[str, _Entity] = {}
        self.relations: dict[tuple[str, str], _Relation] = {}
        self.documents = 0

    def add_extraction(self, raw: Graph, doc_id: str) -> None:
        for item in raw.get("entities", []):
            entity = self._entity(item["name"])
            if entity is None:
                continue
            entity.type_counts[item.get("type") or "unknown"] += 1
            _add_text(entity.descriptions, item.get("description", ""))
            entity.documents.add(doc_id)
            entity.mentions += 1
        for item in raw.get("relations", []):
            self._add_relation(item["source"], item["target"], item, doc_id)
        self.documents = 1

    def _add_relation(self, source: str, target: str, item: Graph, doc_id: str) -> None:
        ends = [self._entity(source), self._entity(target)]
        keys = (entity_key(source), entity_key(target))
        if None in ends or keys[0] == keys[1]:
            return
        relation = self.relations.setdefault(keys, _Relation())
        _add_text(relation.descriptions, item.get("description", ""))
        relation.documents.add(doc_id)
        relation.weight += 1

    def add_graph(self, graph: Graph) -> None:
        for item in graph.get("entities", []):
            entity = self._entity(item["name"])
            if entity is None:
                continue
            entity.type_counts.update(item.get("type_counts", {}))
            entity.descriptions.update(item.get("descriptions", []))
            entity.documents.update(item.get("documents", []))
            entity.mentions += int(item.get("mentions", 0))
        for item in graph.get("relations", []):
            keys = (item["source"], item["target"])
            relation = self.relations.setdefault(keys, _Relation())
            relation.descriptions.update(item.get("descriptions", []))
            relation.documents.update(item.get("documents", []))
            relation.weight += int(item.get("weight", 0))
        self.documents += int(graph.get("documents", 0))

    def _entity(self, name: str) -> _Entity | None:
        key = entity_key(name)
        if not key:
            return None
        display = _SPACE.sub(" ", unicodedata.normalize("NFKC", name)).strip()
        entity = self.entities.get(key)
        if entity is None:
            entity = self.entities[key] = _Entity(name=display)
        entity.name = min(entity.name, display)
        return entity

    def graph(self) -> Graph:
        for source, target in self.relations:
            for key in (source, target):
                self.entities.setdefault(key, _Entity(name=key))
        return {
            "entities": [
                _entity_json(k, self.entities[k]) for k in sorted(self.entities)
            ],
            "relations": [
                _relation_json(keys, self.relations[keys])
                for keys in sorted(self.relations)
            ],
            "documents": self.documents,
        }


def _add_text(into: set[str], text: str) -> None:
    if text:
        into.add(text)


def _entity_json(key: str, entity: _Entity) -> Graph:
    ranked = sorted(entity.type_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "key": key,
        "name": entity.name,
        "type": ranked[0][0] if ranked else "unknown",
        "type_counts": dict(sorted(entity.type_counts.items())),
        "descriptions": sorted(entity.descriptions)[:MAX_LISTED],
        "documents": sorted(entity.documents)[:MAX_LISTED],
        "mentions": entity.mentions,
    }


def _relation_json(keys: tuple[str, str], relation: _Relation) -> Graph:
    return {
        "source": keys[0],
        "target": keys[1],
        "descriptions": sorted(relation.descriptions)[:MAX_LISTED],
        "documents": sorted(relation.documents)[:MAX_LISTED],
        "weight": relation.weight,
    }
