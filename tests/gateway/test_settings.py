"""Settings come from TASKPOINT_* variables and refuse what cannot work."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import DEFAULT_STORE_URL, Settings
from store.factory import store_from_url
from store.sqlite import SQLiteStore


def test_defaults_are_the_embedded_setup(monkeypatch):
    for name in ("BROKER_URL", "STORE_URL", "WORKER_CONCURRENCY"):
        monkeypatch.delenv(f"TASKPOINT_{name}", raising=False)
    settings = Settings()
    assert settings.embedded_broker
    assert settings.store_url == DEFAULT_STORE_URL
    assert isinstance(store_from_url(settings.store_url), SQLiteStore)


def test_variables_are_read(monkeypatch):
    monkeypatch.setenv("TASKPOINT_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    monkeypatch.setenv("TASKPOINT_STORE_URL", "mongodb://db.internal/taskpoint")
    monkeypatch.setenv("TASKPOINT_WORKER_CONCURRENCY", "32")
    monkeypatch.setenv("TASKPOINT_LEASE_SECONDS", "12.5")
    settings = Settings()
    assert not settings.embedded_broker
    assert (settings.worker_concurrency, settings.lease_seconds) == (32, 12.5)
    assert settings.store_url.startswith("mongodb://")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BROKER_URL", "redis://localhost"),
        ("STORE_URL", "postgres://x"),
        ("WORKER_CONCURRENCY", "0"),
        ("LEASE_SECONDS", "-1"),
        ("GATEWAY_PORT", "70000"),
    ],
)
def test_bad_values_are_refused_by_name(monkeypatch, name, value):
    monkeypatch.setenv(f"TASKPOINT_{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()
