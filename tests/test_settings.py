"""settings.py: JETQUEUE_* variables parsed, checked, secrets hidden."""

from __future__ import annotations

import pytest


def test_settings_from_env_name_the_variable_and_hide_secrets():
    from jetqueue.settings import SettingsError, WorkerSettings

    s = WorkerSettings.from_env(
        {
            "JETQUEUE_NATS_PASSWORD": "hunter2",
            "JETQUEUE_ACK_WAIT": "1m30s",
            "JETQUEUE_RETRY_HTTP_CODES": "429, 503",
            "JETQUEUE_QUEUE": "ml",
        }
    )
    assert s.ack_wait == 90 and s.retry_http_codes == (429, 503)
    assert s.stream == "OF_ml" and s.durable == "ml-workers" and s.dlq_stream == "OF_ml_DLQ"
    assert "hunter2" not in repr(s) and "***" in repr(s)
    for env, name in (
        ((("JETQUEUE_MAX_INFLIGHT", "lots"),), "JETQUEUE_MAX_INFLIGHT"),
        ((("JETQUEUE_ACK_WAIT", "soon"),), "JETQUEUE_ACK_WAIT"),
        ((("JETQUEUE_BACKOFF", "linear"),), "JETQUEUE_BACKOFF"),
        ((("JETQUEUE_NATS_PASSWORD", "hunter2"), ("JETQUEUE_STREAM_REPLICAS", "2")), "STREAM_REPLICAS"),
        ((("JETQUEUE_NATS_PASSWORD", "hunter2"), ("JETQUEUE_QUEUE", "Bad_Name")), "JETQUEUE_QUEUE"),
        ((("JETQUEUE_CALLBACK_TIMEOUT", "2m"),), "JETQUEUE_CALLBACK_TIMEOUT"),
    ):
        with pytest.raises(SettingsError, match=name) as e:
            WorkerSettings.from_env(dict(env))
        assert "hunter2" not in str(e.value)


def test_a_callbacks_ack_wait_stays_inside_the_duplicate_window():
    """Handing a redelivered callback on is deduplicated only within the window (callbacks.py)."""
    from jetqueue.contract import jetstream

    longest = jetstream.callback_consumer("q", jetstream.CALLBACK_MAX_TIMEOUT, 512)
    assert longest.ack_wait < jetstream.callback_stream("q", 1, "file").duplicate_window
