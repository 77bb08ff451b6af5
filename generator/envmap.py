"""Rendered chart values → the JETQUEUE_* environment a container gets, as charts/* wire it.

Computed from the same chart wiring in worker/settings.py that generates the charts' env templates
(generator/chartenv.py), so `jetqueue dev`, which runs the processes with exactly this environment, gets what
a pod gets. The named chart templates (NATS connection, Secrets) are conditional Helm logic; they are mirrored
by hand below, and a test renders the charts with the real Helm engine for every values file and feature
combination and checks the Deployments carry exactly these variables.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import yaml

from jetqueue.generator.chartenv import CHARTS_DIR, lookup, wiring
from jetqueue.generator.model import deep_merge
from jetqueue.settings import CALLBACK_SIGNING, GATEWAY_AUTH, NATS, OPENFAAS_AUTH

NATS_TLS_DIR = "/etc/jetqueue/nats-tls"
NATS_CREDS_DIR = "/etc/jetqueue/nats-creds"

# A named template's variables: plain values, and name -> (Secret, key) references.
Env = tuple[dict[str, str], dict[str, tuple[str, str]]]


def _text(value: Any) -> str:
    """A value as the generated templates write it: lists comma-joined, booleans lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def nats_env(values: dict[str, Any]) -> Env:
    """charts/jetqueue-lib's `jetqueue.natsEnv`."""
    nats = values["nats"]
    env = {"JETQUEUE_NATS_URL": nats["url"]}
    if nats["tls"]["enabled"]:
        env["JETQUEUE_NATS_TLS_CA"] = f"{NATS_TLS_DIR}/{nats['tls']['caKey']}"
        if nats["tls"]["clientCert"]:
            env["JETQUEUE_NATS_TLS_CERT"] = f"{NATS_TLS_DIR}/tls.crt"
            env["JETQUEUE_NATS_TLS_KEY"] = f"{NATS_TLS_DIR}/tls.key"
    if nats["tls"]["insecure"]:
        env["JETQUEUE_NATS_TLS_INSECURE"] = "true"
    auth = nats["auth"]
    secrets: dict[str, tuple[str, str]] = {}
    if auth["method"] == "creds":
        env["JETQUEUE_NATS_CREDS"] = f"{NATS_CREDS_DIR}/{auth['credsKey']}"
    elif auth["method"] == "userPassword":
        secrets["JETQUEUE_NATS_USER"] = (auth["secretName"], auth["userKey"])
        secrets["JETQUEUE_NATS_PASSWORD"] = (auth["secretName"], auth["passwordKey"])
    elif auth["method"] == "token":
        secrets["JETQUEUE_NATS_TOKEN"] = (auth["secretName"], auth["tokenKey"])
    return env, secrets


def gateway_auth_env(values: dict[str, Any]) -> Env:
    """charts/gateway's `gateway.authEnv`."""
    auth = values["gateway"]["auth"]
    secret = auth["secretName"]
    if auth["method"] == "bearer":
        return {}, {"JETQUEUE_AUTH_TOKEN": (secret, "token")}
    if auth["method"] == "basic":
        return {}, {"JETQUEUE_AUTH_USER": (secret, "username"), "JETQUEUE_AUTH_PASSWORD": (secret, "password")}
    return {}, {}


def signing_env(values: dict[str, Any]) -> Env:
    """charts/queue-worker's `queue-worker.signingEnv`."""
    signing = values["queue"]["callbackSigning"]
    if not signing["secretName"]:
        return {}, {}
    return {}, {"JETQUEUE_CALLBACK_SIGNING_KEYS": (signing["secretName"], signing["key"])}


def openfaas_env(values: dict[str, Any]) -> Env:
    """charts/jetqueue-lib's `jetqueue.openfaasEnv`."""
    auth = values["openfaas"]["auth"]
    if not auth["secretName"]:
        return {}, {}
    secret = auth["secretName"]
    return {}, {
        "JETQUEUE_OPENFAAS_USER": (secret, auth["userKey"]),
        "JETQUEUE_OPENFAAS_PASSWORD": (secret, auth["passwordKey"]),
    }


HELPERS: dict[str, Callable[[dict[str, Any]], Env]] = {
    NATS: nats_env,
    OPENFAAS_AUTH: openfaas_env,
    GATEWAY_AUTH: gateway_auth_env,
    CALLBACK_SIGNING: signing_env,
}


def chart_env(chart: str, values: dict[str, Any]) -> Env:
    """The environment `chart`'s Deployment gives its container, for merged chart values."""
    env: dict[str, str] = {}
    secrets: dict[str, tuple[str, str]] = {}
    wires = wiring(chart)
    for helper in dict.fromkeys(w.helper for w in wires if w.helper):
        plain, refs = HELPERS[helper](values)
        env.update(plain)
        secrets.update(refs)
    for w in wires:
        if w.helper:
            continue
        value = lookup(values, w.path)
        if not w.file:
            env[w.name] = _text(value)
        elif value or not w.if_set:
            env[w.name] = w.file
    return env, secrets


@cache
def _chart_defaults(chart: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHARTS_DIR / chart / "values.yaml").read_text(encoding="utf-8"))
    return loaded


def with_defaults(chart: str, values: dict[str, Any]) -> dict[str, Any]:
    """Rendered values over the chart's own values.yaml, as Helm merges them (render leaves out what is empty)."""
    merged: dict[str, Any] = deep_merge(_chart_defaults(chart), values)
    return merged


def worker_env(values: dict[str, Any]) -> dict[str, str]:
    """The queue-worker container's plain variables (Secret references are not values one can run with)."""
    return chart_env("queue-worker", with_defaults("queue-worker", values))[0]


def gateway_env(values: dict[str, Any]) -> dict[str, str]:
    """The gateway container's plain variables."""
    return chart_env("gateway", with_defaults("gateway", values))[0]


def routes_document(values: dict[str, Any]) -> dict[str, Any]:
    """The routing file the gateway chart mounts (JETQUEUE_ROUTES_FILE)."""
    g = values["gateway"]
    return {"routes": g["routes"], "queues": g["queues"]}
