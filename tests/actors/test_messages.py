"""Control and job messages: what is accepted, what is refused, and the schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from actors.messages import (
    ControlAction,
    ControlMessage,
    DocumentJob,
    control_message_schema,
)

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "control-message.schema.json"


@pytest.mark.parametrize("spelling", ["retry-failed", "retry_failed"])
def test_both_spellings_of_retry_failed(spelling):
    msg = ControlMessage.model_validate_json(
        json.dumps({"task_id": "t1", "action": spelling, "doc_ids": ["a", "b"]})
    )
    assert msg.action is ControlAction.RETRY_FAILED
    assert msg.doc_ids == ("a", "b")


def test_the_console_message_is_enough():
    msg = ControlMessage.model_validate_json('{"task_id": "abc", "action": "pause"}')
    assert (msg.task_id, msg.action, msg.doc_ids, msg.request_id) == (
        "abc",
        ControlAction.PAUSE,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("body", "fault"),
    [
        ({"task_id": "t", "action": "explode"}, "action"),
        ({"action": "pause"}, "task_id"),
        ({"task_id": "t", "action": "pause", "doc_ids": ["a"]}, "doc_ids"),
        ({"task_id": "t", "action": "pause", "extra": 1}, "extra"),
        ({"task_id": "../etc", "action": "pause"}, "task_id"),
        ({"task_id": "t", "action": "retry-failed", "doc_ids": []}, "doc_ids"),
    ],
)
def test_malformed_control_messages_are_refused_with_the_field(body, fault):
    with pytest.raises(ValidationError, match=fault):
        ControlMessage.model_validate(body)


def test_job_messages_carry_ids_never_text():
    assert set(DocumentJob.model_fields) == {"task_id", "doc_ids", "suspect"}
    with pytest.raises(ValidationError):
        DocumentJob(task_id="t", doc_ids=())
    with pytest.raises(ValidationError):
        DocumentJob.model_validate({"task_id": "t", "doc_ids": ["a"], "text": "x"})


def test_published_schema_matches_the_model():
    published = json.loads(SCHEMA.read_text())
    assert published == control_message_schema()
    jsonschema.validate({"task_id": "t", "action": "retry_failed"}, published)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"task_id": "t", "action": "stop"}, published)


def test_a_task_names_a_model_never_a_url():
    from store.models import TaskConfig

    assert TaskConfig(model="llama3:8b").model == "llama3:8b"
    assert TaskConfig(model="meta-llama/Llama-3-8B").model == "meta-llama/Llama-3-8B"
    with pytest.raises(ValidationError, match="URL"):
        TaskConfig(model="http://evil.example/v1")
