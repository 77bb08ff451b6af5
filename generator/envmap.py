"""Rendered chart values → the JETQUEUE_* environment a container gets, as charts/* wire it.

`jetqueue dev` runs the processes with exactly this environment; a test renders the charts with the
real Helm engine and checks the Deployments carry the same variables, so the charts and the code
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

# Files the charts mount from ConfigMaps.
FUNCTIONS_FILE = "/etc/jetqueue/functions.json"
ROUTES_FILE = "/etc/jetqueue/routes.json"


def _b(v: bool) -> str:
    return "true" if v else "false"


def nats_env(nats: dict[str, Any]) -> dict[str, str]:
    env = {"JETQUEUE_NATS_URL": nats["url"]}
    if nats["tls"]["enabled"]:
        env["JETQUEUE_NATS_TLS_CA"] = "/etc/jetqueue/nats-tls/" + nats["tls"]["caKey"]
        if nats["tls"]["clientCert"]:
            env["JETQUEUE_NATS_TLS_CERT"] = "/etc/jetqueue/nats-tls/tls.crt"
            env["JETQUEUE_NATS_TLS_KEY"] = "/etc/jetqueue/nats-tls/tls.key"
    if nats["auth"]["method"] == "creds":
        env["JETQUEUE_NATS_CREDS"] = "/etc/jetqueue/nats-creds/" + nats["auth"]["credsKey"]
    return env


def secret_env(nats: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Variables taken from the NATS credentials Secret: name -> (secret, key)."""
    auth = nats["auth"]
    if auth["method"] == "userPassword":
        return {
            "JETQUEUE_NATS_USER": (auth["secretName"], auth["userKey"]),
            "JETQUEUE_NATS_PASSWORD": (auth["secretName"], auth["passwordKey"]),
        }
    if auth["method"] == "token":
        return {"JETQUEUE_NATS_TOKEN": (auth["secretName"], auth["tokenKey"])}
    return {}


def worker_env(values: dict[str, Any]) -> dict[str, str]:
    q = values["queue"]
    r = q["retry"]
    env = {
        **nats_env(values["nats"]),
        "JETQUEUE_QUEUE": q["name"],
        "JETQUEUE_STREAM": q["stream"],
        "JETQUEUE_DURABLE": q["durable"],
        "JETQUEUE_DLQ_STREAM": q["deadLetterStream"],
        "JETQUEUE_MODE": q["mode"],
        "JETQUEUE_STREAM_REPLICAS": str(q["streamReplicas"]),
        "JETQUEUE_STREAM_STORAGE": q["streamStorage"],
        "JETQUEUE_MAX_INFLIGHT": str(q["maxInflight"]),
        "JETQUEUE_ACK_WAIT": q["ackWait"],
        "JETQUEUE_MAX_ACK_PENDING": str(q["maxAckPending"]),
        "JETQUEUE_MAX_WAITING": str(q["maxWaiting"]),
        "JETQUEUE_INACTIVE_THRESHOLD": q["inactiveThreshold"],
        "JETQUEUE_ADAPTIVE_CONCURRENCY": _b(q["adaptiveConcurrency"]),
        "JETQUEUE_UPSTREAM_TIMEOUT": q["upstreamTimeout"],
        "JETQUEUE_SHUTDOWN_TIMEOUT": q["shutdownTimeout"],
        "JETQUEUE_FUNCTION_URL": q["functionURL"],
        "JETQUEUE_CALL_STATUS": _b(q["callStatus"]["enabled"]),
        "JETQUEUE_STATUS_TTL": q["callStatus"]["ttl"],
        "JETQUEUE_MAX_RETRY_ATTEMPTS": str(r["maxAttempts"]),
        "JETQUEUE_INITIAL_RETRY_WAIT": r["initialWait"],
        "JETQUEUE_MAX_RETRY_WAIT": r["maxWait"],
        "JETQUEUE_RETRY_HTTP_CODES": ",".join(str(c) for c in r["httpCodes"]),
        "JETQUEUE_BACKOFF": r["backoff"],
        "JETQUEUE_LOG_FORMAT": values["logs"]["format"],
        "JETQUEUE_LOG_LEVEL": values["logs"]["level"],
        "JETQUEUE_HTTP_PORT": str(values["metrics"]["port"]),
    }
    if q["functions"]:
        env["JETQUEUE_FUNCTIONS_FILE"] = FUNCTIONS_FILE
    return env


def gateway_env(values: dict[str, Any]) -> dict[str, str]:
    g = values["gateway"]
    env = {
        **nats_env(values["nats"]),
        "JETQUEUE_HTTP_PORT": str(g["port"]),
        "JETQUEUE_ROUTES_FILE": ROUTES_FILE,
        "JETQUEUE_DEFAULT_QUEUE": g["defaultQueue"],
        "JETQUEUE_STRICT_ROUTING": _b(g["strictRouting"]),
        "JETQUEUE_MAX_BODY_SIZE": g["maxBodySize"],
        "JETQUEUE_CALL_STATUS": _b(g["callStatus"]["enabled"]),
        "JETQUEUE_STATUS_TTL": g["callStatus"]["ttl"],
        "JETQUEUE_CALLBACK_HOSTS": ",".join(g["callbackHosts"]),
        "JETQUEUE_LOG_FORMAT": values["logs"]["format"],
        "JETQUEUE_LOG_LEVEL": values["logs"]["level"],
    }
    return env


def routes_document(values: dict[str, Any]) -> dict[str, Any]:
    """The routing file the gateway chart mounts (JETQUEUE_ROUTES_FILE)."""
    g = values["gateway"]
    return {"routes": g["routes"], "queues": g["queues"]}
