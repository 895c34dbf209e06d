"""API tokens: made here, stored only as hashes.

A token is 32 random bytes, URL-safe, prefixed ``tp_`` so that it is easy to
spot in a leaked log. Tokens carry that much entropy, so one SHA-256 is enough
to store them safely, and lets the gateway find a token by its hash in one
indexed read.
"""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "tp_"


def new_token() -> str:
    """Return a fresh API token."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Return the hash under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()
