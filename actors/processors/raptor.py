"""The ``raptor`` processor: a tree of summaries over one document.

The document is cut into chunks (the leaves). Each level groups the nodes of
the level below, by embeddings and k-means when the backend has an embedding
model, by adjacency otherwise, and summarises each group with the LLM. Levels
are added until one node, the root, is left. The tree is the document's
result::

    {"root": {"id", "text", "children"},
     "levels": [[{"id", "text", "children": [ids one level down]}, ...], ...],
     "chunks": N}

``levels[0]`` are the chunks; ``levels[-1]`` holds the root alone. Node ids
are ``"<level>.<index>"``, so a re-run gives the same ids.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from actors.llm import TASK_SUMMARISE, LLMBackend, backend_for, system_message
from actors.processors.base import (
    PermanentError,
    ProcessorContext,
    TransientError,
    run_all,
)
from actors.processors.text import chunk_text, document_text

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1200
CHUNK_OVERLAP = 150
BRANCHING = 4
SUMMARY_TOKENS = 400
KMEANS_ROUNDS = 25

Node = dict[str, Any]

SUMMARY_INSTRUCTIONS = (
    "Summarise the passages in the user message in one paragraph of at most "
    "150 words. Keep the names, figures and claims that matter; add nothing "
    "that is not in the passages. Reply with the summary only."
)


class RaptorProcessor:
    """Builds a RAPTOR summary tree for each document.

    Args:
        llm: the backend to use when the worker's context carries none; the
            context's backend wins when both are set.
        chunk_size: the most characters in a chunk.
        overlap: characters a chunk repeats from the one before.
        branching: the number of nodes a summary covers, on average.
    """

    name = "raptor"

    def __init__(
        self,
        llm: LLMBackend | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
        overlap: int = CHUNK_OVERLAP,
        branching: int = BRANCHING,
    ) -> None:
        if branching < 2:
            raise ValueError(f"branching {branching!r} must be at least 2")
        self.llm = llm
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.branching = branching

    async def process(self, ctx: ProcessorContext) -> dict[str, Any] | None:
        """Return the document's summary tree.

        Raises:
            PermanentError: the document has no text, or cannot be read.
            TransientError: the provider failed; the attempt may be retried.
        """
        llm = backend_for(ctx, self.llm)
        text = await document_text(ctx)
        chunks = await ctx.run_cpu(chunk_text, text, self.chunk_size, self.overlap)
        if not chunks:
            raise PermanentError(f"document {ctx.doc_id!r} has no text to summarise")
        levels = [[_node(0, i, chunk, []) for i, chunk in enumerate(chunks)]]
        while len(levels) == 1 or len(levels[-1]) > 1:
            levels.append(await self._next_level(ctx, llm, levels))
        return {"root": levels[-1][0], "levels": levels, "chunks": len(chunks)}

    async def _next_level(
        self, ctx: ProcessorContext, llm: LLMBackend, levels: list[list[Node]]
    ) -> list[Node]:
        below, number = levels[-1], len(levels)
        groups = await self._group(ctx, llm, below)
        summaries = await run_all(
            self._summarise(ctx, llm, [below[i] for i in group]) for group in groups
        )
        return [
            _node(number, index, summary, [below[i]["id"] for i in group])
            for index, (group, summary) in enumerate(
                zip(groups, summaries, strict=True)
            )
        ]

    async def _group(
        self, ctx: ProcessorContext, llm: LLMBackend, nodes: list[Node]
    ) -> list[list[int]]:
        if len(nodes) <= self.branching:
            return [list(range(len(nodes)))]
        vectors = await llm.embed([n["text"] for n in nodes], ledger=ctx.tokens)
        if not vectors:
            return adjacent_groups(len(nodes), self.branching)
        k = math.ceil(len(nodes) / self.branching)
        return await ctx.run_cpu(cluster_groups, vectors, k, 2 * self.branching)

    async def _summarise(
        self, ctx: ProcessorContext, llm: LLMBackend, nodes: list[Node]
    ) -> str:
        messages = [
            system_message(TASK_SUMMARISE, SUMMARY_INSTRUCTIONS),
            {"role": "user", "content": "\n\n".join(n["text"] for n in nodes)},
        ]
        summary = await llm.chat(
            messages,
            ledger=ctx.tokens,
            max_tokens=SUMMARY_TOKENS,
            model=ctx.task.config.model,
        )
        if not summary.strip():
            raise TransientError(
                f"document {ctx.doc_id!r}: the model returned an empty summary"
            )
        return summary.strip()


def adjacent_groups(count: int, branching: int) -> list[list[int]]:
    """Group ``count`` nodes in order, ``branching`` at a time (last may be short).

    Sizes are balanced: 9 nodes at 4 become 3, 3, 3 rather than 4, 4, 1.
    """
    groups = math.ceil(count / branching)
    bounds = [round(i * count / groups) for i in range(groups + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(groups)]


def cluster_groups(
    vectors: list[list[float]], k: int, max_size: int
) -> list[list[int]]:
    """Group vectors by k-means; ordered by first member, each in index order.

    A cluster larger than ``max_size`` is split into adjacent pieces, so that
    no summary covers too much text. Deterministic: same vectors, same groups.
    """
    labels = kmeans(vectors, k)
    clusters: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        clusters.setdefault(label, []).append(index)
    groups: list[list[int]] = []
    for members in sorted(clusters.values()):
        for piece in adjacent_groups(len(members), max_size):
            groups.append([members[i] for i in piece])
    return sorted(groups)


def kmeans(
    vectors: list[list[float]], k: int, rounds: int = KMEANS_ROUNDS
) -> list[int]:
    """Return a cluster label per vector (pure Python, cosine geometry).

    Vectors are normalised to unit length; the first centre is the first
    vector, each next one the vector farthest from the centres so far.
    """
    points = [_unit(v) for v in vectors]
    k = max(1, min(k, len(points)))
    centres = _farthest_first(points, k)
    labels: list[int] = []
    for _ in range(rounds):
        new = [_nearest(p, centres) for p in points]
        if new == labels:
            break
        labels = new
        centres = [_mean(_members(points, labels, c)) or centres[c] for c in range(k)]
    return labels


def _members(points: list[list[float]], labels: list[int], c: int) -> list[list[float]]:
    return [p for p, label in zip(points, labels, strict=True) if label == c]


def _farthest_first(points: list[list[float]], k: int) -> list[list[float]]:
    centres = [points[0]]
    while len(centres) < k:
        far = max(points, key=lambda p: min(_distance(p, c) for c in centres))
        centres.append(far)
    return centres


def _nearest(point: list[float], centres: list[list[float]]) -> int:
    return min(range(len(centres)), key=lambda c: _distance(point, centres[c]))


def _distance(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def _mean(points: list[list[float]]) -> list[float]:
    if not points:
        return []
    return [sum(column) / len(points) for column in zip(*points, strict=True)]


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _node(level: int, index: int, text: str, children: list[str]) -> Node:
    return {"id": f"{level}.{index}", "text": text, "children": children}
