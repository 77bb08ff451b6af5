"""Signed callbacks: `X-Jetqueue-Signature: t=<unix seconds>,<key id>=<hex HMAC-SHA256(key, "<t>." + body)>`,
one `<key id>=` pair per configured key, so receivers can rotate (accept the next key before it becomes the
only one). The timestamp is part of what is signed: a receiver refuses old ones, so a replayed callback fails.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

HEADER = "X-Jetqueue-Signature"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def signing_keys(text: str) -> dict[str, bytes]:
    """`id:secret,id2:secret2` → {id: secret}; raises ValueError (never showing a secret) when malformed."""
    keys: dict[str, bytes] = {}
    for i, item in enumerate((part.strip() for part in text.split(",")), 1):
        if not item:
            continue
        kid, sep, secret = item.partition(":")
        if not sep or not _KEY_ID.match(kid) or kid == "t" or len(secret) < 16:
            raise ValueError(
                f"key {i} must be id:secret (id: letters, digits, _ or -, not 't'; secret: at least 16 characters)"
            )
        keys[kid] = secret.encode()
    return keys


def signature(body: bytes, keys: dict[str, bytes], now: float | None = None) -> str:
    t = str(int(time.time() if now is None else now))
    signed = t.encode() + b"." + body
    return ",".join(
        [f"t={t}", *(f"{kid}={hmac.new(k, signed, hashlib.sha256).hexdigest()}" for kid, k in keys.items())]
    )
