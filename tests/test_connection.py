"""NATS authentication and TLS end to end (worker, gateway, CLI), and secrets never shown."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import aiohttp
import pytest
import trustme

from tests.helpers import gateway_settings, running_gateway, running_worker, worker_settings
from tests.servers import NatsServer, eventually


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def tls_files(ca, tmp_path, client: bool = False) -> dict[str, str]:
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    if client:
        c = ca.issue_cert("jetqueue-client")
        paths["client_cert"], paths["client_key"] = tmp_path / "client.pem", tmp_path / "client.key"
        c.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
        c.private_key_pem.write_to_path(str(paths["client_key"]))
    return {k: str(v) for k, v in paths.items()}


CASES = {
    "user/password": (
        'authorization { user: "jq", password: "s3cret-pw" }',
        {"nats_user": "jq", "nats_password": "s3cret-pw"},
    ),
    "token": ('authorization { token: "s3cret-token" }', {"nats_token": "s3cret-token"}),
}


async def round_trip(url: str, functions, callbacks, **auth) -> None:
    async with (
        running_gateway(gateway_settings(url, **auth)) as gw,
        running_worker(worker_settings(url, functions.url_template, **auth)) as w,
    ):
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"http://127.0.0.1:{gw.s.http_port}/async-function/echo",
                data=b"secure",
                headers={"X-Callback-Url": callbacks.url},
            ) as r:
                assert r.status == 202
        await eventually(lambda: len(callbacks.received) == 1)
        for secret in ("s3cret-pw", "s3cret-token"):
            assert secret not in repr(w.s) and secret not in repr(gw.s)


def cli_status(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetqueue", "status"], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("case", sorted(CASES))
async def test_nats_auth_end_to_end(tmp_path, functions, callbacks, case, caplog):
    conf, auth = CASES[case]
    server = NatsServer(tmp_path / "nats", extra_conf=conf).start()
    try:
        with caplog.at_level(logging.DEBUG):
            await round_trip(server.url, functions, callbacks, **auth)
        assert all(s not in caplog.text for s in ("s3cret-pw", "s3cret-token"))
        # The CLI with the same credentials from the environment; without them, a clear refusal.
        env = {"JETQUEUE_NATS_URL": server.url, **{f"JETQUEUE_{k.upper()}": v for k, v in auth.items()}}
        ok = await asyncio.to_thread(cli_status, env)
        assert ok.returncode == 0 and "faas-request" in ok.stdout, ok.stderr
        bad = await asyncio.to_thread(cli_status, {"JETQUEUE_NATS_URL": server.url})
        assert bad.returncode == 1 and "credentials" in bad.stderr and "Traceback" not in bad.stderr
    finally:
        server.stop()


@pytest.mark.parametrize("mutual", [False, True], ids=["server TLS", "mutual TLS"])
async def test_nats_tls_end_to_end(tmp_path, functions, callbacks, ca, mutual):
    f = tls_files(ca, tmp_path, client=mutual)
    verify = "verify: true" if mutual else ""
    conf = f'tls {{ cert_file: "{f["cert"]}", key_file: "{f["key"]}", ca_file: "{f["ca"]}", {verify} }}'
    server = NatsServer(tmp_path / "nats", extra_conf=conf).start()
    try:
        url = f"tls://127.0.0.1:{server.port}"
        auth = {"nats_tls_ca": f["ca"]}
        if mutual:
            auth |= {"nats_tls_cert": f["client_cert"], "nats_tls_key": f["client_key"]}
        await round_trip(url, functions, callbacks, **auth)
    finally:
        server.stop()


async def test_insecure_tls_connects_to_a_self_signed_nats_and_says_so_loudly(
    tmp_path, functions, callbacks, ca, caplog
):
    """JETQUEUE_NATS_TLS_INSECURE: a dev NATS whose certificate no CA given here vouches for. Without it, refused."""
    from jetqueue.connection import connect
    from jetqueue.settings import SharedSettings

    f = tls_files(ca, tmp_path)
    conf = f'tls {{ cert_file: "{f["cert"]}", key_file: "{f["key"]}" }}'
    server = NatsServer(tmp_path / "nats", extra_conf=conf).start()
    url = f"tls://127.0.0.1:{server.port}"
    try:
        with pytest.raises(ConnectionError):  # the system's CAs do not know trustme's
            await connect(SharedSettings(nats_url=url), "probe", connect_attempts=2)
        with caplog.at_level(logging.WARNING, logger="jetqueue.nats"):
            await round_trip(url, functions, callbacks, nats_tls_insecure=True)
        warnings = [
            r.getMessage() for r in caplog.records if r.name == "jetqueue.nats" and "INSECURE" in r.getMessage()
        ]
        assert len(warnings) == 2  # the worker's connection and the gateway's
        assert "anyone on the path can read and change every call" in warnings[0]
    finally:
        server.stop()


def test_settings_repr_hides_every_secret():
    from jetqueue.settings import GatewaySettings, WorkerSettings

    g = GatewaySettings(
        nats_password="p1", nats_token="t1", auth_token="t2", auth_password="p2", openfaas_password="p3"
    )
    w = WorkerSettings(nats_password="p1", nats_token="t1", openfaas_password="p3")
    for text in (repr(g), repr(w)):
        for secret in ("p1", "t1", "t2", "p2", "p3"):
            assert f"'{secret}'" not in text
