"""The gateway chart's dashboard switch: off by default; on, the gateway serves it behind the API's credentials
(the same Secret wiring as the API's)."""

from __future__ import annotations

from jetqueue.settings import GatewaySettings
from tests.test_charts import deployment, env_of, manifests


def test_the_switch_is_off_by_default_and_turns_the_dashboard_on_behind_the_api_auth():
    plain, _ = env_of(deployment(manifests("gateway", None))["spec"]["template"]["spec"]["containers"][0])
    assert plain["JETQUEUE_DASHBOARD"] == "false"
    assert GatewaySettings.from_env(plain).dashboard is False
    values = {"gateway": {"dashboard": {"enabled": True}, "auth": {"method": "bearer", "secretName": "api"}}}
    plain, refs = env_of(deployment(manifests("gateway", values))["spec"]["template"]["spec"]["containers"][0])
    assert plain["JETQUEUE_DASHBOARD"] == "true"
    assert GatewaySettings.from_env(plain).dashboard is True
    assert refs["JETQUEUE_AUTH_TOKEN"] == ("api", "token")
