"""Heuristics behind the local LLM backend: no model, no network.

These approximate what the processors ask a language model for, well enough
to run a walk-through on a laptop; they are not a substitute for a model.

- :func:`summarise` is extractive: it keeps the sentences whose words are the
  most frequent in the text, in their original order.
- :func:`extract_graph` takes capitalised phrases as entities (a sentence's
  first word only when it is not a common word) and relates two entities that
  appear in the same sentence.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

from actors.processors.text import STOPWORDS, sentences, word_counts

_PHRASE = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of\s+|the\s+)?[A-Z][\w'-]*)*")
_MAX_DESCRIPTION = 200


def summarise(text: str, keep: int = 3) -> str:
    """Return the ``keep`` highest-scoring sentences of ``text``, in order.

    A sentence scores the mean frequency (in the whole text) of its content
    words; ties go to the earlier sentence.
    """
    found = sentences(text)
    if len(found) <= keep:
        return " ".join(found)
    counts = word_counts(text)

    def score(index: int) -> tuple[float, int]:
        words = word_counts(found[index])
        total = sum(counts[w] * n for w, n in words.items())
        return total / max(sum(words.values()), 1), -index

    best = sorted(range(len(found)), key=score, reverse=True)[:keep]
    return " ".join(found[i] for i in sorted(best))


def extract_graph(text: str) -> dict[str, list[dict[str, Any]]]:
    """Return ``{"entities": [...], "relations": [...]}`` found in ``text``.

    Entities have a name, the type ``"unknown"`` (a heuristic cannot tell a
    person from a place) and the first sentence that mentions them as their
    description; relations join entities of one sentence.
    """
    entities: dict[str, dict[str, Any]] = {}
    relations: dict[tuple[str, str], dict[str, Any]] = {}
    for sentence in sentences(text):
        names = _entities_in(sentence)
        for name in names:
            entities.setdefault(name, _entity(name, sentence))
        for source, target in combinations(names, 2):
            relations.setdefault((source, target), _relation(source, target, sentence))
    return {"entities": list(entities.values()), "relations": list(relations.values())}


def _entities_in(sentence: str) -> list[str]:
    names: list[str] = []
    for match in _PHRASE.finditer(sentence):
        name = _trim(match.group(0))
        if name and name not in names:
            names.append(name)
    return names


def _trim(phrase: str) -> str:
    words = phrase.split()
    while words and words[0].lower() in STOPWORDS:
        words.pop(0)
    return " ".join(words) if words and len(" ".join(words)) > 1 else ""


def _entity(name: str, sentence: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "unknown",
        "description": sentence[:_MAX_DESCRIPTION],
    }


def _relation(source: str, target: str, sentence: str) -> dict[str, Any]:
    return {
        "source": source,
        "target": target,
        "description": sentence[:_MAX_DESCRIPTION],
    }
