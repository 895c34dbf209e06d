"""Settings: one model, read from ``TASKPOINT_*`` variables at the entry point.

Nothing under ``actors/`` or ``store/`` reads the environment; the entry point
builds :class:`Settings` once and hands the values down.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE_URL = "sqlite:///taskpoint-data/checkpoints.db"


class Settings(BaseSettings):
    """How a taskpoint process connects and runs.

    Every field is read from the variable ``TASKPOINT_<FIELD>``, for example
    ``TASKPOINT_BROKER_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="TASKPOINT_", extra="forbid")

    broker_url: str = Field(
        "",
        description="amqp:// URL of RabbitMQ; empty runs the in-process broker",
    )
    store_url: str = Field(
        DEFAULT_STORE_URL,
        description="sqlite:///PATH (relative to the working folder) or mongodb://...",
    )
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8080, ge=0, le=65535)
    worker_concurrency: int = Field(8, ge=1, le=4096)
    lease_seconds: float = Field(60.0, gt=0, description="lease of a claimed document")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("broker_url")
    @classmethod
    def _amqp_or_empty(cls, value: str) -> str:
        if value and not value.startswith(("amqp://", "amqps://")):
            raise ValueError(
                f"broker URL {value!r} must start with amqp:// or amqps://, "
                "or be empty for the in-process broker"
            )
        return value

    @field_validator("store_url")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "mongodb://", "mongodb+srv://")):
            raise ValueError(
                f"store URL {value!r} must start with sqlite:///, mongodb:// "
                "or mongodb+srv://"
            )
        return value

    @property
    def embedded_broker(self) -> bool:
        """Whether this process runs the in-process broker."""
        return not self.broker_url
