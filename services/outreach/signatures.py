"""Inbound webhook signatures: the spine's scheme (``shared.signatures``, the one Leadstream
also signs its own webhook deliveries with) and the names of the integrations."""

from __future__ import annotations

import re

from shared.signatures import (  # noqa: F401 - this service's vocabulary
    SECRET_PREFIX,
    SIGNATURE_HEADER,
    TOLERANCE_S,
    SignatureError,
    new_webhook_secret,
    parse_header,
    sign,
    signature,
    verify,
)

INTEGRATION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
