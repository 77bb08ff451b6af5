"""Call tags (`X-Call-Tags: signup,batch-7`): a few short labels a caller gives a call, kept in its status records
(`tags`) and indexed so `DELETE /async-calls?tag=…` cancels every call of a tag (gateway/calls.py).

Where: the header travels with the call (forwarded to the function like any header), so the worker's records carry
the tags too (callstatus.base_record). The gateway writes one index key per tag, `_tag.<tag>.<call id>`
(`contract.tag_key`), in the call's status bucket, confirmed before the 202: a tagged call the index misses would
escape a bulk cancel. A tag has no `.`, so a tag's keys are exactly the subjects under `_tag.<tag>.`, listed by the
server (a filtered watch), never by reading the bucket's other keys. They expire with the status TTL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

HEADER = "X-Call-Tags"
MAX_TAGS = 5
TAG = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
TAG_RULE = f"at most {MAX_TAGS} comma-separated tags, each 1-32 characters of [A-Za-z0-9_-]"


class BadTags(ValueError):
    pass


def parse(value: str) -> list[str]:
    """The tags of an `X-Call-Tags` value, in order, without repeats; BadTags says what is wrong."""
    tags: list[str] = []
    for part in value.split(","):
        tag = part.strip()
        if not TAG.match(tag):
            raise BadTags(f"{HEADER}: {tag!r} is not a tag ({TAG_RULE})")
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise BadTags(f"{HEADER}: {len(tags)} tags ({TAG_RULE})")
    return tags


def of_headers(headers: Mapping[str, str]) -> list[str]:
    """The tags of a call from its forwarded headers ([] when none, or when not valid: status is a report)."""
    for k, v in headers.items():
        if len(k) == len(HEADER) and k.lower() == "x-call-tags":
            try:
                return parse(v)
            except BadTags:
                return []
    return []
