"""The dashboard's pages over a real nats-server, without a browser: what a filtered dead-letter page offers and
does, and what it never shows."""

from __future__ import annotations

import re

import aiohttp
from aiohttp.test_utils import TestServer

from jetqueue import contract, provision
from jetqueue.contract import jetstream
from jetqueue.dashboard.app import Dashboard
from jetqueue.dashboard.command import standalone_app
from jetqueue.settings import GatewaySettings
from tests.helpers import connect

TOKEN = "pages-test-token-0123456789"


async def test_a_filtered_dead_letter_page_acts_on_its_filter_and_shows_no_credentials(nats_server) -> None:
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream("q"))
    await provision.ensure_dlq_stream(js, jetstream.dead_letter_stream("q"))
    for call in ("a", "b"):
        headers = {
            contract.H_CALL_ID: call,
            contract.H_DLQ_REASON: "exhausted",
            contract.H_DLQ_ERROR: "<img src=x onerror=alert(1)>",
            contract.H_DLQ_SUBJECT: "q.fn",
            # Kept as sent (JETQUEUE_DEAD_LETTER_CREDENTIALS=true): the dashboard still never shows it.
            contract.H_FORWARD + "Authorization": "Bearer kept-for-replay-secret",
        }
        await js.publish(contract.dlq_subject("q", "fn"), b"job", headers=headers)
    server = TestServer(standalone_app(Dashboard(GatewaySettings(auth_token=TOKEN), lambda: nc)), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url(""))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=auth) as http:
            async with http.get(base + "/dashboard/queues/q/dead-letters?call_id=a") as r:
                page = await r.text()
            assert r.status == 200
            assert "kept-for-replay-secret" not in page and "[redacted]" in page
            assert "<img" not in page and "&lt;img src=x" in page
            assert 'data-call-id="a"' in page and 'data-call-id="b"' not in page
            assert "purge-all" not in page  # `jetqueue dlq purge` has no --call-id: not offered for one call
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
            assert csrf
            form = {"csrf": csrf.group(1), "call_id": "a"}
            url = base + "/dashboard/queues/q/dead-letters/replay"
            async with http.post(url, data=form, headers={"Origin": base}) as r:
                assert r.status == 200 and "replayed 1 call(s) onto q" in await r.text()
        assert (await js.stream_info("OF_q")).state.messages == 1
        left = await js.get_msg("OF_q_DLQ", seq=2)
        assert left.headers and left.headers[contract.H_CALL_ID] == "b"
    finally:
        await server.close()
        await nc.close()
