"""A touch's idempotency key (pure): its external id within its source, the API key's name or
the webhook integration; the stored format is pinned (migration 0005 keeps a copy of it)."""

from __future__ import annotations

import hashlib
import importlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.outreach.external_keys import api_key_of, external_key, webhook_key_of


def test_the_key_is_sha256_of_the_json_array_of_kind_scope_and_id():
    assert external_key("api", "salesloft-sync", "123") == hashlib.sha256(
        b'["api","salesloft-sync","123"]').hexdigest()
    assert external_key("webhook", "hubspot", "évt") == hashlib.sha256(
        '["webhook","hubspot","évt"]'.encode()).hexdigest()


@pytest.mark.parametrize(("one", "other"), [
    (api_key_of("tool-a", "123"), api_key_of("tool-b", "123")),            # two keys' names
    (webhook_key_of("x", "y"), api_key_of("x", "x:y")),                   # a webhook and an API caller
    (webhook_key_of("x", "y"), api_key_of("anyone", "x:y")),
    (webhook_key_of("x", "y"), webhook_key_of("x2", "y")),                # two integrations
    (api_key_of("a:b", "c"), api_key_of("a", "b:c")),                     # no separator joins them
    (api_key_of('a","b', "c"), api_key_of("a", 'b","c')),
])
def test_sources_do_not_meet(one, other):
    assert one != other


def test_the_same_source_and_id_is_the_same_key():
    assert api_key_of("tool-a", "123") == api_key_of("tool-a", "123") == external_key("api", "tool-a", "123")
    assert webhook_key_of("salesloft", "evt_9") == external_key("webhook", "salesloft", "evt_9")
    assert api_key_of("tool-a", None) is None
    assert len(api_key_of("tool-a", "x" * 255)) == 64


@given(st.sampled_from(["api", "webhook"]), st.text(max_size=30), st.text(max_size=30))
def test_the_migration_computes_the_same_key(kind, scope, external_id):
    migration = importlib.import_module(
        "services.outreach.migrations.versions.0005_touch_external_keys_per_source")
    assert migration._key(kind, scope, external_id) == external_key(kind, scope, external_id)  # noqa: SLF001
