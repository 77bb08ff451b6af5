"""How a setting is declared and read: `setting()` gives a dataclass field its default, help, parsing and chart
wiring; `EnvSettings` reads the fields from `JETQUEUE_<NAME>` environment variables (`from_env()`), checks the
generic rules (choices, no negative durations) and hides secrets in `repr`. worker/settings.py declares the
settings themselves; the charts' env blocks, `jetqueue dev`'s env and the settings reference are generated from
the metadata here (generator/chartenv.py, generator/settingsdoc.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from jetqueue.durations import parse_duration

PREFIX = "JETQUEUE_"
T = TypeVar("T", bound="EnvSettings")


class SettingsError(ValueError):
    pass


CHARTS = ("queue-worker", "gateway")  # the Helm charts: queue-worker runs WorkerSettings, gateway GatewaySettings
# Named chart templates that set variables the generated env blocks cannot: conditional, or from Secrets.
NATS = "jetqueue.natsEnv"  # charts/jetqueue-lib: the NATS connection (TLS and creds files, Secret refs)
GATEWAY_AUTH = "gateway.authEnv"  # charts/gateway: the API credentials, from a Secret
CALLBACK_SIGNING = "queue-worker.signingEnv"  # charts/queue-worker: the callback signing keys, from a Secret
OPENFAAS_AUTH = "jetqueue.openfaasEnv"  # charts/jetqueue-lib: the OpenFaaS gateway's basic-auth, from a Secret
DEFAULT = "the default applies"  # the usual reason a chart does not set a setting


def setting(
    default: Any,
    help: str,
    kind: str = "",
    secret: bool = False,
    choices: tuple[str, ...] = (),
    *,
    values: str | dict[str, str] = "",
    helper: str = "",
    file: str = "",
    if_set: bool = False,
    not_in_chart: str = "",
) -> Any:
    """A setting: default, one-line help, how to parse it (duration, size, list), and how the charts set it: the one
    source of the charts' env templates, `jetqueue dev`'s env and the README (generator/chartenv.py). `values`: the
    chart values path ({chart: path} when the charts differ). `helper`: a named chart template sets it (conditional,
    Secrets). `file`: the chart mounts `values` there (`if_set`: when not empty). `not_in_chart`: why it does not."""
    charts = set(values) if isinstance(values, dict) else set(CHARTS) if values else set()
    if not charts <= set(CHARTS) or ((helper or file) and not values) or (helper and file) or (if_set and not file):
        raise TypeError(f"{help!r}: values= names charts {CHARTS}; helper= or file= need values=; if_set= needs file=")
    wiring = {"values": values, "helper": helper, "file": file, "if_set": if_set, "not_in_chart": not_in_chart}
    return field(default=default, metadata={"help": help, "kind": kind, "secret": secret, "choices": choices, **wiring})


def chart_values(f: dataclasses.Field[Any], chart: str) -> str:
    """The values path `chart` sets this setting from; empty when that chart does not set it."""
    values = f.metadata["values"]
    return str(values.get(chart, "")) if isinstance(values, dict) else str(values)


@dataclass(repr=False)
class EnvSettings:
    """The base of every process's settings: subclasses declare fields with `setting()`."""

    @classmethod
    def from_env(cls: type[T], env: Mapping[str, str] | None = None) -> T:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = PREFIX + f.name.upper()
            if name not in env:
                continue
            raw = env[name].strip()
            try:
                values[f.name] = _parse(raw, f)
            except ValueError as e:
                raise SettingsError(f"{name}={_shown(f, raw)!s}: {e}") from None
        obj = cls(**values)
        obj.check()
        return obj

    def check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["choices"] and value not in f.metadata["choices"]:
                opts = ", ".join(f.metadata["choices"])
                raise SettingsError(f"{PREFIX}{f.name.upper()}={value!r}: must be one of {opts}")
            if f.metadata["kind"] in ("duration", "size") and value < 0:
                raise SettingsError(f"{PREFIX}{f.name.upper()}: must not be negative")

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={_shown(f, getattr(self, f.name))!r}" for f in fields(self))
        return f"{type(self).__name__}({shown})"


def _shown(f: dataclasses.Field[Any], value: Any) -> Any:
    return "***" if f.metadata["secret"] and value else value


def _parse(raw: str, f: dataclasses.Field[Any]) -> Any:
    kind = f.metadata["kind"]
    if kind == "duration":
        return parse_duration(raw)
    if kind == "codes":
        codes = tuple(int(c) for c in raw.replace(" ", "").split(",") if c)
        if any(not 100 <= c <= 599 for c in codes):
            raise ValueError("HTTP status codes are 100-599")
        return codes
    if kind == "size":
        units = {"ki": 1024, "mi": 1024**2, "k": 1000, "m": 1000**2}
        low = raw.lower()
        for suffix, mult in units.items():
            if low.endswith(suffix):
                return int(float(low[: -len(suffix)]) * mult)
        return int(raw)
    if isinstance(f.default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(f.default, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(f.default, float):
        return float(raw)
    return raw
