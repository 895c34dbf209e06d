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
    broker_prefix: str = Field(
        "taskpoint",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="prefix of every queue and exchange name",
    )
    worker_concurrency: int = Field(8, ge=1, le=4096)
    lease_seconds: float = Field(60.0, gt=0, description="lease of a claimed document")
    job_size: int = Field(16, ge=1, le=1000, description="document ids per job message")
    sweep_interval: float = Field(1.0, gt=0, description="seconds between sweeps")
    document_time_limit: float = Field(
        3600.0, gt=0, description="longest single attempt at a document, seconds"
    )
    drain_timeout: float = Field(
        30.0, ge=0, description="on shutdown, how long in-flight documents may finish"
    )
    provider_failure_pause: int = Field(
        5,
        ge=0,
        description="a task pauses itself after this many documents in a row fail "
        "transiently (0: never)",
    )
    llm_backend: Literal["local", "openai"] = Field(
        "local",
        description="local: no network, an approximation; openai: any "
        "OpenAI-compatible endpoint (hosted, vLLM, Ollama)",
    )
    llm_base_url: str = Field("", description="e.g. https://api.openai.com/v1")
    llm_api_key: str = Field("", description="sent as a bearer token to the endpoint")
    llm_model: str = Field(
        "gpt-4o-mini", description="chat model, unless a task picks one"
    )
    llm_embedding_model: str = Field(
        "", description="embedding model; empty groups chunks by adjacency"
    )
    llm_concurrency: int = Field(
        32, ge=1, le=4096, description="calls in flight to the provider, per process"
    )
    llm_timeout: float = Field(120.0, gt=0, description="one provider call, seconds")
    failpoints: str = Field(
        "", description="for fault tests only: see actors/failpoints.py"
    )
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
