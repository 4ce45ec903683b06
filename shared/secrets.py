"""Secrets at rest: signing secrets that must be read back (to sign or verify an HMAC) are
stored encrypted with ``LEADSTREAM_SECRETS_KEY`` (Fernet from ``cryptography``: AES-128-CBC
with an HMAC-SHA256, authenticated, a random IV per value), never in clear.

The setting takes one or more Fernet keys separated by commas: the first encrypts, every
one decrypts, so a key is rotated by putting the new one first and re-encrypting
(``SecretBox.rotate``). ``DEVELOPMENT_KEY`` is public (it is in this file): ``make run``
uses it so the project works out of the box, and a process that uses it says so in its
log. It protects nothing; production sets its own key (``leadstream secrets new-key``).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

# A published key: anyone can decrypt what it encrypted. For development and tests only.
DEVELOPMENT_KEY = "bGVhZHN0cmVhbS1kZXZlbG9wbWVudC1rZXktdW5zYSE="  # urlsafe base64 of 32 bytes

# An encrypted value starts with Fernet's version byte 0x80, base64: "gAAAAA".
_TOKEN_PREFIX = "gAAAAA"


class SecretKeyError(ValueError):
    """``LEADSTREAM_SECRETS_KEY`` is not a comma-separated list of Fernet keys."""


class UndecryptableSecret(ValueError):
    """A stored value was encrypted with a key that is not configured (or was altered)."""


def new_key() -> str:
    """A fresh key for ``LEADSTREAM_SECRETS_KEY``."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts and decrypts short secrets with the configured keys."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise SecretKeyError("LEADSTREAM_SECRETS_KEY is empty")
        try:
            fernets = [Fernet(k) for k in parts]
        except (ValueError, TypeError):
            # never echo the value: it is a key
            raise SecretKeyError("LEADSTREAM_SECRETS_KEY must be Fernet keys (32 url-safe base64-encoded "
                                 "bytes), separated by commas") from None
        self._fernet = MultiFernet(fernets)
        self.development = parts[0] == DEVELOPMENT_KEY

    def encrypt(self, secret: str) -> str:
        """The secret encrypted with the first key (a different text each call)."""
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, stored: str) -> str:
        """The secret of a stored value; ``UndecryptableSecret`` if no configured key opens it."""
        try:
            return self._fernet.decrypt(stored.encode()).decode()
        except (InvalidToken, ValueError, TypeError):
            raise UndecryptableSecret("a stored secret cannot be decrypted with LEADSTREAM_SECRETS_KEY "
                                      "(was the key changed without keeping the old one?)") from None

    def rotate(self, stored: str) -> str:
        """A stored value re-encrypted with the first key (after a new key was put first)."""
        try:
            return self._fernet.rotate(stored.encode()).decode()
        except InvalidToken:
            raise UndecryptableSecret("a stored secret cannot be decrypted with LEADSTREAM_SECRETS_KEY") from None

    @staticmethod
    def looks_encrypted(stored: str) -> bool:
        """True for a value this box (with some key) produced; used by migrations of old rows."""
        return stored.startswith(_TOKEN_PREFIX)

    def __repr__(self) -> str:  # never the keys
        return f"SecretBox(development={self.development})"


__all__ = ["DEVELOPMENT_KEY", "SecretBox", "SecretKeyError", "UndecryptableSecret", "new_key"]
