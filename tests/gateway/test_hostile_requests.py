"""Hostile requests against a live gateway and NATS: paths, sizes, header sets and callback URLs.

Every answer is a documented 4xx or a 202; a 202 only for what the contract lets through; and the gateway
is still connected to NATS (still answering 202 to a plain call) after every example.
"""

from __future__ import annotations

import http.client

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetqueue import contract
from jetqueue.egress import DEFAULT_BLOCKED_NETWORKS, Egress
from tests.gateway.test_openapi import (
    gateway,  # noqa: F401 - the live gateway process, module-scoped
    request,
)

SEGMENT_PARTS = [
    ".",
    "..",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    "%25",
    "%252e",
    "a",
    "b-1",
    "%20",
    "~",
    ";",
    "=",
]
segment = st.lists(st.sampled_from(SEGMENT_PARTS), min_size=0, max_size=4).map("".join)
tail = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
HOSTILE_CALLBACKS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://[::ffff:169.254.169.254]/",
    "http://100.100.100.200/",
    "http://user:pass@127.0.0.1:9/cb",
    "file:///etc/passwd",
    "gopher://127.0.0.1:70/",
    "http:///nohost",
    "http://127.0.0.1:9/cb",
    "https://example.com/cb?x=1#frag",
]
EGRESS = Egress.parse("", DEFAULT_BLOCKED_NETWORKS)


def still_connected(port: int) -> None:
    assert request(port, "POST", "/async-function/echo", b"ok")[0] == 202


def post_raw(port: int, raw_path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    """http.client sends the path as given: no client-side normalisation of dot segments."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", raw_path, body=body, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=tail)
def test_paths(gateway, path):  # noqa: F811
    status = post_raw(gateway, f"/async-function/echo{path}")
    expected = 202 if contract.path_problem(path) is None else 400
    assert status == expected, (path, status)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(url=st.sampled_from(HOSTILE_CALLBACKS))
def test_callback_urls(gateway, url):  # noqa: F811
    status = post_raw(gateway, "/async-function/echo", b"x", {"X-Callback-Url": url})
    assert status == (202 if EGRESS.url_problem(url) is None else 400), (url, status)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    size=st.integers(min_value=0, max_value=8 * 1024),
    headers=st.dictionaries(
        st.from_regex(r"X-[A-Za-z]{1,12}", fullmatch=True), st.text("abc ", max_size=300), max_size=8
    ),
)
def test_sizes_and_header_sets(gateway, size, headers):  # noqa: F811
    status = post_raw(gateway, "/async-function/echo", b"x" * size, headers)
    assert status in (202, 413), status  # the gateway's body limit is 4Ki here
    still_connected(gateway)


@pytest.mark.parametrize("path", ["/async-function/echo/%2e%2e/admin", "/async-function/echo/../../system/x"])
def test_known_escapes_stay_refused(gateway, path):  # noqa: F811
    assert post_raw(gateway, path) == 400
    still_connected(gateway)
