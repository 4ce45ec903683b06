"""Secrets at rest (shared.secrets): encrypted with the configured keys, rotated, never shown."""

from __future__ import annotations

import pytest

from shared.secrets import DEVELOPMENT_KEY, SecretBox, SecretKeyError, UndecryptableSecret, new_key
from shared.settings import Settings


def test_encrypts_to_a_new_text_each_time_and_decrypts():
    box = SecretBox(new_key())
    first, second = box.encrypt("whsec_abc"), box.encrypt("whsec_abc")
    assert first != second and "whsec_abc" not in first
    assert box.decrypt(first) == box.decrypt(second) == "whsec_abc"
    assert box.looks_encrypted(first) and not box.looks_encrypted("whsec_abc")


def test_another_key_cannot_decrypt_and_says_so_without_the_key():
    key = new_key()
    stored = SecretBox(key).encrypt("whsec_abc")
    with pytest.raises(UndecryptableSecret) as caught:
        SecretBox(new_key()).decrypt(stored)
    assert key not in str(caught.value)
    with pytest.raises(UndecryptableSecret):
        SecretBox(key).decrypt(stored[:-4] + "AAAA")  # altered


def test_rotation_new_key_first_old_key_still_decrypts():
    old, new = new_key(), new_key()
    stored = SecretBox(old).encrypt("whsec_abc")
    both = SecretBox(f"{new}, {old}")
    assert both.decrypt(stored) == "whsec_abc"
    rotated = both.rotate(stored)
    assert SecretBox(new).decrypt(rotated) == "whsec_abc"


@pytest.mark.parametrize("bad", ["", " , ", "not-a-key", "c2hvcnQ="])
def test_malformed_keys_are_refused_without_echoing_them(bad):
    with pytest.raises(SecretKeyError) as caught:
        SecretBox(bad)
    assert not bad.strip(" ,") or bad not in str(caught.value)


def test_the_development_key_is_the_default_and_flagged():
    assert Settings().secrets_key == DEVELOPMENT_KEY
    assert SecretBox(DEVELOPMENT_KEY).development and not SecretBox(new_key()).development
    assert DEVELOPMENT_KEY not in repr(Settings()) and DEVELOPMENT_KEY not in repr(SecretBox(DEVELOPMENT_KEY))


def test_settings_refuse_a_malformed_key():
    with pytest.raises(ValueError, match="LEADSTREAM_SECRETS_KEY"):
        Settings(secrets_key="nope")
