"""Shared fixtures. Servers are real: nats-server from the venv, aiohttp function servers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def nats_server(tmp_path):
    from tests.servers import NatsServer

    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
async def functions():
    from tests.servers import FunctionServer

    server = await FunctionServer().start()
    yield server
    await server.stop()


@pytest.fixture
async def callbacks():
    from tests.servers import CallbackReceiver

    receiver = await CallbackReceiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def http():
    import aiohttp

    async with aiohttp.ClientSession() as s:
        yield s


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`, --dist loadgroup) the `slow` tests (clusters, chaos, network namespaces)
    all run in one worker process, one after another, beside the quick ones: two of them at once would load the
    machine in ways their scenarios do not intend, and a module's namespaces lab is set up once."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("slow"))
