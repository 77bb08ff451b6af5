"""signing.py: callbacks verified exactly as docs/callbacks.md tells receivers to, with its own code."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jetqueue.settings import SettingsError, WorkerSettings
from jetqueue.signing import HEADER, signature, signing_keys
from tests.helpers import connect, enqueue, running_worker, worker_settings
from tests.servers import eventually

KEYS = "k1:0123456789abcdef0123,k2:fedcba9876543210fedc"


def readme_verifier() -> Callable[..., bool]:
    """The verifier as docs/callbacks.md prints it: a test of the documentation, not a copy of it."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "callbacks.md").read_text()
    code = re.search(r"```python\n(\s*import hashlib, hmac, time.*?)```", text, re.S)
    assert code, "docs/callbacks.md lost its verifier"
    lines = code.group(1).splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    namespace: dict[str, object] = {}
    exec("\n".join(line[indent:] for line in lines), namespace)
    verify = namespace["verify"]
    assert callable(verify)
    return verify


async def test_a_receiver_accepts_a_signed_callback_and_refuses_replays_and_alterations(
    nats_server, functions, callbacks
):
    verify = readme_verifier()
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, callback_signing_keys=KEYS)):
        await enqueue(nc, "echo", b"result", callback_url=callbacks.url)
        await eventually(lambda: len(callbacks.received) == 1)
    await nc.close()
    headers, body = callbacks.received[0]
    header = headers[HEADER]
    assert verify(header, body, {"k1": b"0123456789abcdef0123"})  # the current key
    assert verify(header, body, {"k2": b"fedcba9876543210fedc"})  # or the next one, during a rotation
    assert not verify(header, body + b"!", {"k1": b"0123456789abcdef0123"})  # altered body
    assert not verify(header, body, {"k1": b"another-key-entirely!"})  # wrong key
    old = signature(body, signing_keys(KEYS), now=time.time() - 3600)
    assert not verify(old, body, {"k1": b"0123456789abcdef0123"})  # replayed an hour later
    assert not verify("k1=" + header.split("k1=")[1], body, {"k1": b"0123456789abcdef0123"})  # no timestamp


@pytest.mark.parametrize("bad", ["nokey", "t:0123456789abcdef", "k1:short", "bad id:0123456789abcdef"])
def test_malformed_keys_fail_at_start_without_showing_the_secret(bad):
    with pytest.raises(SettingsError, match="CALLBACK_SIGNING_KEYS") as e:
        WorkerSettings.from_env({"JETQUEUE_CALLBACK_SIGNING_KEYS": bad})
    assert "0123456789abcdef" not in str(e.value)
