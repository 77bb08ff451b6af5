"""Hostile input straight onto the queue's subjects: no crash, no stuck consumer, bad messages dead-lettered."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetqueue import contract
from tests.helpers import connect, running_worker, worker_settings
from tests.servers import FunctionServer, NatsServer, eventually

token = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="*>."), min_size=1, max_size=20
)
header_key = st.sampled_from(
    [
        contract.H_METHOD,
        contract.H_PATH,
        contract.H_QUERY,
        contract.H_CALL_ID,
        contract.H_START,
        contract.H_CALLBACK,
        "Jq-Header-X",
        "Random",
    ]
)
header_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
message = st.tuples(
    st.lists(token, min_size=1, max_size=3).map(lambda parts: "faas-request." + ".".join(parts)),
    st.dictionaries(header_key, header_value, max_size=4),
    st.binary(max_size=2000),
)


def expected_valid(subject: str, headers: dict[str, str]) -> bool:
    try:
        contract.decode(subject, b"", headers, "id-1")
    except contract.BadMessage:
        return False
    return True


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(message, min_size=20, max_size=60))
def test_random_messages_never_stop_the_worker(batch):
    asyncio.run(_run(batch))


async def _run(batch):
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp)).start()
        functions = await FunctionServer().start()
        nc = await connect(server.url)
        js = nc.jetstream()
        try:
            settings_ = worker_settings(
                server.url, functions.url_template, max_retry_attempts=2, initial_retry_wait=0.05, call_status=False
            )
            async with running_worker(settings_):
                for subject, headers, data in batch:
                    # Callbacks to random hosts would leave the machine: keep them on loopback.
                    if contract.H_CALLBACK in headers:
                        headers[contract.H_CALLBACK] = "http://127.0.0.1:9/cb"
                    await js.publish(subject, data, headers=headers or None)
                await js.publish("faas-request.canary", b"alive", headers={contract.H_CALL_ID: "canary"})
                await eventually(lambda: "canary" in functions.completed["canary"], timeout=60)

                async def settled() -> bool:
                    info = await js.consumer_info("OF_faas-request", "faas-request-workers")
                    return bool(info.num_pending == 0 and info.num_ack_pending == 0)

                for _ in range(600):
                    if await settled():
                        break
                    await asyncio.sleep(0.05)
                assert await settled(), "consumer stuck"
            bad = sum(not expected_valid(s, h) for s, h, _ in batch)
            dlq = (await js.stream_info("OF_faas-request_DLQ")).state.messages
            assert dlq >= bad  # every undecodable message is dead-lettered (valid ones may fail too)
        finally:
            await nc.close()
            await functions.stop()
            server.stop()
