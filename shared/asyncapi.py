"""The events contract as an AsyncAPI 3.0 document, generated from the event models.

Downstream teams build on the topics without reading Python: ``docs/events/asyncapi.yaml`` is
this module's output (``leadstream events asyncapi`` prints it, and a test fails when the file
and the code disagree). Every topic is a channel (the dead-letter topics too), every CloudEvents
``type`` a message whose payload is the structured-mode envelope with the JSON Schema of its
``data``, as pydantic writes it for what producers send (``mode="serialization"``).
"""

from __future__ import annotations

import functools
from typing import Any

import yaml

from shared.events import (
    CONTACT_ERASED,
    CONTENT_TYPE,
    EVENT_TYPES,
    LEADS_CAPTURED,
    OPPORTUNITIES_QUALIFIED,
    OUTREACH_TOUCHES,
    PIPELINE_CHANGES,
    PRIVACY_REQUESTS,
    TOPICS,
    dlq_topic,
)
from shared.settings import Settings

SCHEMAS = "#/components/schemas/"

TOPIC_DESCRIPTIONS = {
    LEADS_CAPTURED: "Inbound leads accepted by capture (forms, landing pages, the JSON API).",
    OUTREACH_TOUCHES: "Outbound prospects and touches accepted by outreach from sales tools.",
    OPPORTUNITIES_QUALIFIED: (
        "One event per qualification: everything a CRM needs to create its opportunity "
        "(contact, account, motion, first and last touch, scores with reasons, policy version)."
    ),
    PIPELINE_CHANGES: (
        "Every lifecycle stage change, automatic (qualification) or by sales (pipeline), and every contact "
        "erased at the person's request (`contact.erased`: erase your copies of that contact)."
    ),
    PRIVACY_REQUESTS: (
        "The erasure saga: requests (`erasure.requested`), each store's report (`erasure.completed`) and "
        "new opt-ins that lift an erased address's suppression (`suppression.lifted`). Never an email: "
        "the person is a keyed hash."
    ),
}

PRODUCERS = {  # who publishes each topic, as a sentence (the spine names no service as a value)
    LEADS_CAPTURED: "The capture service publishes",
    OUTREACH_TOUCHES: "The outreach service publishes",
    OPPORTUNITIES_QUALIFIED: "The qualification service publishes",
    PIPELINE_CHANGES: "The qualification and pipeline services publish",
    PRIVACY_REQUESTS: "The pipeline service (requests) and every store (reports) publish",
}

DLQ_HEADERS = {
    "dlq-reason": "Why the event could not be processed (at most 4,000 bytes).",
    "dlq-exception": "The exception's class name.",
    "dlq-original-topic": "The topic the event was read from.",
    "dlq-original-partition": "Its partition there.",
    "dlq-original-offset": "Its offset there.",
    "dlq-consumer-group": "The consumer group that gave it up.",
    "dlq-failed-at": "When, as an ISO 8601 timestamp.",
}

KEY = {
    "type": "string",
    "description": "The contact's normalised email (trimmed, lower-cased, googlemail.com = gmail.com): "
                   "one partition per contact, so a contact's events keep their order.",
}
# the types keyed otherwise
KEYS = {
    CONTACT_ERASED: {"type": "string", "description": "The erased contact's id (never personal data)."},
    **{t: {"type": "string", "description": "The person's keyed hash: HMAC-SHA256 of the normalised email "
                                            "with LEADSTREAM_PRIVACY_SECRET, as hex (never the email)."}
       for t, (topic, _) in EVENT_TYPES.items() if topic == PRIVACY_REQUESTS},
}


def message_name(event_type: str) -> str:
    """``io.leadstream.lead.captured.v1`` → ``lead.captured.v1`` (an AsyncAPI component key)."""
    return event_type.removeprefix("io.leadstream.")


def _data_schemas() -> dict[str, Any]:
    """Every data model's JSON Schema, with the models they use, as components."""
    schemas: dict[str, Any] = {}
    for _, model in EVENT_TYPES.values():
        schema = model.model_json_schema(mode="serialization", ref_template=SCHEMAS + "{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def _envelope(event_type: str, data_model: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A CloudEvents 1.0 event in structured mode: the whole event is the message value.",
        "required": ["specversion", "id", "source", "type", "time", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "minLength": 1,
                   "description": "Unique per fact: deduplicate by it (a relay may deliver a message again)."},
            "source": {"type": "string", "minLength": 1,
                       "description": "The emitting service, e.g. /leadstream/capture."},
            "type": {"const": event_type},
            "time": {"type": "string", "format": "date-time", "description": "When the fact happened."},
            "subject": {"type": "string", "description": "The contact (its normalised email)."},
            "datacontenttype": {"const": "application/json"},
            "traceparent": {"type": "string", "description": "W3C trace context, where a trace exists."},
            "data": {"$ref": SCHEMAS + data_model},
        },
        "additionalProperties": True,
    }


def _headers(dlq: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"content-type": {"const": CONTENT_TYPE}}
    if dlq:
        properties.update({name: {"type": "string", "description": text} for name, text in DLQ_HEADERS.items()})
    return {"type": "object", "required": ["content-type"], "properties": properties}


def _topic_binding(settings: Settings, topic: str) -> dict[str, Any]:
    retention = settings.kafka_dlq_retention_ms if topic.endswith(".dlq") else settings.kafka_topic_retention_ms
    return {"kafka": {
        "topic": topic,
        "partitions": settings.kafka_partitions,
        "topicConfiguration": {"cleanup.policy": ["delete"], "retention.ms": retention},
        "bindingVersion": "0.5.0",
    }}


def _ref(path: str) -> dict[str, str]:
    return {"$ref": path}


def document(settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every topic and event type, with the default settings'
    partitions and retention."""
    settings = settings or Settings.model_construct()  # the defaults, whatever the environment says
    schemas = _data_schemas()
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for event_type, (topic, model) in EVENT_TYPES.items():
        name = message_name(event_type)
        schemas[f"{model.__name__}Event"] = _envelope(event_type, model.__name__)
        messages[name] = {
            "name": event_type,
            "title": event_type,
            "summary": (model.__doc__ or f"{event_type} on {topic}").strip().splitlines()[0],
            "contentType": CONTENT_TYPE,
            "headers": _headers(dlq=False),
            "payload": _ref(SCHEMAS + f"{model.__name__}Event"),
            "bindings": {"kafka": {"key": KEYS.get(event_type, KEY), "bindingVersion": "0.5.0"}},
        }
        messages[f"{name}.dead-lettered"] = {
            "name": event_type,
            "title": f"{event_type} (dead-lettered)",
            "summary": "The original message (key, value and headers), with why it could not be processed.",
            "contentType": CONTENT_TYPE,
            "headers": _headers(dlq=True),
            "payload": _ref(SCHEMAS + f"{model.__name__}Event"),
            "bindings": {"kafka": {"key": KEYS.get(event_type, KEY), "bindingVersion": "0.5.0"}},
        }
    for topic in TOPICS:
        types = [t for t, (tp, _) in EVENT_TYPES.items() if tp == topic]
        for address, dlq in ((topic, False), (dlq_topic(topic), True)):
            suffix = ".dead-lettered" if dlq else ""
            channels[address] = {
                "address": address,
                "title": address,
                "description": (
                    f"Events of {topic} that a consumer could not process: the original message, never "
                    "silently dropped; inspect, fix and re-publish." if dlq else TOPIC_DESCRIPTIONS[topic]
                ),
                "messages": {message_name(t) + suffix: _ref(f"#/components/messages/{message_name(t)}{suffix}")
                             for t in types},
                "bindings": _topic_binding(settings, address),
            }
            operations[f"publish.{address}"] = {
                "action": "send",
                "channel": _ref(f"#/channels/{address}"),
                "summary": f"{'Any consumer publishes' if dlq else PRODUCERS[topic]} to {address}.",
                "messages": [_ref(f"#/channels/{address}/messages/{message_name(t)}{suffix}") for t in types],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Leadstream events",
            "version": "1.0.0",
            "description": (
                "Every Kafka message is a CloudEvents 1.0 JSON event in structured mode (header "
                "content-type: application/cloudevents+json), keyed by the contact's normalised email "
                "(privacy.requests by the person's keyed hash, contact.erased by the contact id). "
                "Delivery is at least once: deduplicate by `id`. Order holds per key (one partition per "
                "contact). Generated from the code by `leadstream events asyncapi`."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "embedded": {
                "host": "127.0.0.1:9092", "protocol": "kafka",
                "description": "`make run`'s embedded broker; production names its own cluster "
                               "(LEADSTREAM_KAFKA_BOOTSTRAP_SERVERS).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render(settings: Settings | None = None) -> str:
    """The document as YAML, in a stable order (the committed file is compared with it)."""
    return "# Generated by `leadstream events asyncapi`: edit the event models, not this file.\n" + yaml.safe_dump(
        document(settings), sort_keys=False, allow_unicode=True, width=100
    )


@functools.cache
def event_validator(event_type: str):  # noqa: ANN201
    """A ``jsonschema`` validator of a whole event of ``event_type`` against the document (tests use it)."""
    import jsonschema

    doc = document()
    model = EVENT_TYPES[event_type][1].__name__
    root = {"$ref": SCHEMAS + f"{model}Event", "components": doc["components"]}
    return jsonschema.Draft202012Validator(root)
