"""API keys and tenant names, as values: how a key looks, how it is stored, who is anonymous.

A key is `pxs_` and 43 URL-safe characters (32 random bytes); only its SHA-256 is stored, so
a leaked table names no usable key. The hash need not be slow: a key is not a password, it
cannot be guessed from a dictionary.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Final

KEY_PREFIX: Final = "pxs_"
ANONYMOUS: Final = "anonymous"
TENANT_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_KEY: Final = re.compile(r"^pxs_[A-Za-z0-9_-]{32,128}$")
_TENANT: Final = re.compile(TENANT_PATTERN)


def new_key() -> tuple[str, str]:
    """A fresh (key id, key): the id is shown and listed, the key only once."""
    return f"key_{secrets.token_hex(8)}", KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def well_formed(key: str) -> bool:
    return _KEY.match(key) is not None


def check_tenant(name: str) -> str:
    """`name` when it is a valid tenant name; ValueError saying what a name may be."""
    if not _TENANT.match(name):
        raise ValueError(
            f"tenant {name!r}: 1-63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
