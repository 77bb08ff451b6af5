"""openfaas.py: the functions' annotations read from a real HTTP server that serves the OpenFaaS gateway's API as
OpenFaaS documents it (tests/openfaas_gateway.py), with basic auth; clear logs when it is absent or refuses us."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Set

import pytest

from jetqueue.openfaas import Function, FunctionCatalog
from tests.openfaas_gateway import OpenFaaSGateway
from tests.servers import eventually, free_port


@pytest.fixture
async def openfaas_gateway():
    gw = await OpenFaaSGateway().start()
    yield gw
    await gw.stop()


class Seen:
    """A listener that keeps what the catalog published."""

    def __init__(self) -> None:
        self.published: list[Mapping[str, Function]] = []

    def __call__(self, functions: Mapping[str, Function], changed: Set[str]) -> None:
        assert changed  # only told of a change
        self.published.append(dict(functions))

    @property
    def last(self) -> Mapping[str, Function]:
        return self.published[-1] if self.published else {}


async def started(url: str, seen: Seen, user: str = "admin", password: str = "s3cret", refresh: float = 30.0):
    catalog = FunctionCatalog(url, user, password, refresh, [seen])
    catalog.start()
    return catalog


async def test_every_function_is_read_at_once_with_basic_auth_then_refreshed(openfaas_gateway):
    gw = openfaas_gateway
    gw.deploy("resize", annotations={"com.openfaas.retry.attempts": "30"}, envVars={"exec_timeout": "2m"})
    gw.deploy("plain")
    seen = Seen()
    catalog = await started(gw.url, seen, refresh=1.0)
    try:
        await eventually(lambda: "resize" in seen.last)
        assert seen.last["resize"] == Function({"com.openfaas.retry.attempts": "30"}, {"exec_timeout": "2m"})
        assert seen.last["plain"] == Function({}, {})
        assert gw.api_calls[0] == ("/system/functions", "")
        gw.deploy("resize", annotations={"com.openfaas.retry.attempts": "5"})  # changed at the gateway
        await eventually(lambda: seen.last["resize"].annotations == {"com.openfaas.retry.attempts": "5"})
        del gw.functions["openfaas-fn"]["plain"]
        await eventually(lambda: "plain" not in seen.last)
    finally:
        await catalog.close()


async def test_a_function_not_known_yet_is_looked_up_once_not_on_every_call(openfaas_gateway):
    gw = openfaas_gateway
    seen = Seen()
    catalog = await started(gw.url, seen)
    try:
        await eventually(lambda: catalog.refreshed_at > 0)
        gw.deploy("late", annotations={"com.openfaas.queue": "slow"})
        gw.deploy("other", namespace="team-a", annotations={"com.openfaas.retry.codes": "429"})
        for _ in range(1000):  # a burst of calls: each asks, one look-up each
            for name in ("late", "other.team-a", "missing"):
                if not catalog.knows(name):
                    catalog.want(name)
        await eventually(lambda: "late" in seen.last and "other.team-a" in seen.last and catalog.knows("missing"))
        assert seen.last["other.team-a"].annotations == {"com.openfaas.retry.codes": "429"}
        lookups = [c for c in gw.api_calls if c[0] != "/system/functions"]
        assert sorted(lookups) == [
            ("/system/function/late", ""),
            ("/system/function/missing", ""),
            ("/system/function/other", "team-a"),
        ]
        assert "missing" in catalog.absent and "missing" not in seen.last  # 404: no such function
    finally:
        await catalog.close()


async def test_wrong_credentials_are_logged_once_and_nothing_is_applied(openfaas_gateway, caplog):
    gw = openfaas_gateway
    gw.deploy("resize", annotations={"com.openfaas.retry.attempts": "30"})
    seen = Seen()
    caplog.set_level(logging.ERROR, logger="jetqueue.openfaas")
    catalog = await started(gw.url, seen, password="wrong", refresh=1.0)
    try:
        await eventually(lambda: len(gw.api_calls) >= 3)
        errors = [r.getMessage() for r in caplog.records if r.name == "jetqueue.openfaas"]
        assert len(errors) == 1, errors  # said once, not at every refresh
        assert "refused our credentials (401)" in errors[0] and "JETQUEUE_OPENFAAS_USER" in errors[0]
        assert "queues.yaml alone decides" in errors[0]
        assert seen.published == []
    finally:
        await catalog.close()


async def test_an_absent_endpoint_says_so_and_a_recovered_one_is_used(functions, caplog):
    # `functions` is an HTTP server without the OpenFaaS API: /system/functions answers 404.
    seen = Seen()
    caplog.set_level(logging.INFO, logger="jetqueue.openfaas")
    base = f"http://127.0.0.1:{functions.port}"
    catalog = await started(base, seen, refresh=1.0)
    try:
        await eventually(lambda: any("answered 404" in r.getMessage() for r in caplog.records))
        message = next(r.getMessage() for r in caplog.records if "answered 404" in r.getMessage())
        assert f"{base}/system/functions answered 404: not the OpenFaaS gateway's API (JETQUEUE_OPENFAAS_URL)" in (
            message
        )
        assert not seen.published
    finally:
        await catalog.close()
    caplog.clear()
    # Nothing listens: a connection error, said once; when the gateway answers, it says so and applies them.
    port = free_port()
    catalog = FunctionCatalog(f"http://127.0.0.1:{port}", "admin", "s3cret", 1.0, [seen])
    catalog.start()
    try:
        await eventually(lambda: any("cannot read" in r.getMessage() for r in caplog.records))
        back = await OpenFaaSGateway(port=port).start()  # the gateway comes up at that address
        back.deploy("resize")
        try:
            await eventually(lambda: "resize" in seen.last)
        finally:
            await back.stop()
        assert any("function annotations: 1 function(s) read from" in r.getMessage() for r in caplog.records)
        assert sum("cannot read" in r.getMessage() for r in caplog.records) == 1
    finally:
        await catalog.close()


async def test_close_stops_the_refresher(openfaas_gateway):
    seen = Seen()
    catalog = await started(openfaas_gateway.url, seen, refresh=1.0)
    await eventually(lambda: catalog.refreshed_at > 0)
    await catalog.close()
    calls = len(openfaas_gateway.api_calls)
    await asyncio.sleep(1.5)
    assert len(openfaas_gateway.api_calls) == calls
