"""Fixtures of the actor tests: the fake OpenAI-compatible provider."""

from __future__ import annotations

import pytest

from actors.llm import OpenAIBackend
from tests.support.fake_llm import FakeLLM


@pytest.fixture
async def fake():
    """A local OpenAI-compatible server that stands in for a provider."""
    async with FakeLLM() as server:
        yield server


@pytest.fixture
async def backend(fake):
    """An OpenAI-compatible backend pointed at the fake provider."""
    async with OpenAIBackend(fake.url, None, "fake-model", timeout=5) as made:
        yield made
