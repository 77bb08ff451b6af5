"""Every validation rule, with the position it must point at."""

from __future__ import annotations

import textwrap

import pytest

from jetqueue.generator.validate import validate_text


def problems(doc: str) -> list[str]:
    result = validate_text(textwrap.dedent(doc))
    return [p.format("q.yaml") for p in result.problems]


def only_error(doc: str) -> str:
    found = [p for p in problems(doc) if ": warning: " not in p]
    assert len(found) == 1, found
    return found[0]


def test_example_is_valid(repo_root):
    result = validate_text((repo_root / "queues.yaml").read_text())
    assert result.errors == [], [p.format("queues.yaml") for p in result.problems]
    assert result.config is not None
    assert set(result.config["queues"]) == {"faas-request", "ml-batch"}


def test_minimal_file_gets_defaults():
    result = validate_text("queues:\n  faas-request: {}\n")
    assert result.config is not None
    q = result.config["queues"]["faas-request"]
    assert q["maxInflight"] == 50 and q["ackWait"] == "30s" and q["retry"]["maxAttempts"] == 10
    assert q["maxAckPending"] == 100  # 2 × maxInflight × replicas
    assert result.config["nats"]["url"] == "nats://nats.nats:4222"


def test_queue_inherits_defaults_key_by_key():
    result = validate_text(
        "defaults: {maxInflight: 7, retry: {maxAttempts: 4, initialWait: 1s}}\n"
        "queues:\n  faas-request: {retry: {maxAttempts: 9}}\n"
    )
    assert result.config is not None
    q = result.config["queues"]["faas-request"]
    assert q["maxInflight"] == 7
    assert q["retry"]["maxAttempts"] == 9 and q["retry"]["initialWait"] == "1s" and q["retry"]["maxWait"] == "120s"


def test_invalid_yaml_points_at_the_syntax_error():
    out = only_error("queues:\n  a: [1, 2\n  b: {}\n")
    assert out.startswith("q.yaml:3:") and "invalid YAML" in out


def test_duplicate_key_rejected_with_both_lines():
    out = only_error(
        """\
        queues:
          faas-request:
            maxInflight: 1
            maxInflight: 2
        """
    )
    assert out.startswith("q.yaml:4:5: $.queues.faas-request.maxInflight: duplicate key")
    assert "line 3" in out


def test_unknown_key_suggests_nearest():
    out = only_error("queues:\n  faas-request:\n    maxInflght: 3\n")
    assert out == "q.yaml:3:5: $.queues.faas-request.maxInflght: unknown key 'maxInflght' (did you mean 'maxInflight'?)"


def test_unknown_key_in_blocks_shared_through_defs():
    """`defaults` and each queue extend $defs/queue, a function override uses $defs/retryPolicy: same hints."""
    assert only_error("defaults: {maxInflght: 3}\nqueues:\n  faas-request: {}\n") == (
        "q.yaml:1:12: $.defaults.maxInflght: unknown key 'maxInflght' (did you mean 'maxInflight'?)"
    )
    assert only_error("defaults: {functions: [a]}\nqueues:\n  faas-request: {}\n").startswith(
        "q.yaml:1:12: $.defaults.functions: unknown key 'functions'"
    )
    out = only_error("queues:\n  faas-request:\n    functionOverrides:\n      infer: {retry: {backof: full}}\n")
    assert out == (
        "q.yaml:4:23: $.queues.faas-request.functionOverrides.infer.retry.backof: "
        "unknown key 'backof' (did you mean 'backoff'?)"
    )


def test_duration_message_follows_the_ref_to_the_site():
    out = only_error("queues:\n  faas-request:\n    functionOverrides: {infer: {upstreamTimeout: 2x}}\n")
    assert out.endswith("functionOverrides.infer.upstreamTimeout: '2x' is not a Go duration such as 30s or 1m30s")
    out = only_error("queues:\n  faas-request: {callbackRetry: {maxWait: 2x}}\n")
    assert (
        out
        == "q.yaml:2:43: $.queues.faas-request.callbackRetry.maxWait: '2x' is not a Go duration such as 30s or 1m30s"
    )


def test_wrong_type_and_enum():
    out = problems("nats:\n  durability: strik\nqueues:\n  faas-request:\n    maxInflight: many\n")
    assert any(p.startswith("q.yaml:2:15: $.nats.durability:") and "did you mean 'strict'" in p for p in out)
    assert any(p.startswith("q.yaml:5:18: $.queues.faas-request.maxInflight: 'many' is not of type") for p in out)


def test_every_problem_reported_at_once():
    out = problems(
        """\
        nats: {replicas: 4}
        defaults: {ackWait: 1s}
        queues:
          faas-request: {typo: 1}
          Bad_Name: {}
        """
    )
    assert len(out) == 4, out
    assert out[0].startswith("q.yaml:4:")  # the schema error (best match) comes first


def test_queue_name_must_be_dns_label():
    assert only_error("gateway: {strictRouting: true}\nqueues:\n  Bad_Queue: {}\n").startswith(
        "q.yaml:3:3: $.queues.Bad_Queue: queue name 'Bad_Queue' must be a DNS-1123 label"
    )


def test_queue_name_length():
    name = "q" * 41
    out = only_error(f"gateway: {{strictRouting: true}}\nqueues:\n  {name}: {{}}\n")
    assert out.startswith(f"q.yaml:3:3: $.queues.{name}:") and "at most 40" in out


def test_function_routed_twice():
    out = only_error("queues:\n  faas-request: {functions: [a]}\n  other: {functions: [b, a]}\n")
    assert out.startswith("q.yaml:3:26: $.queues.other.functions[1]: function 'a' is already routed to queue")


def test_stream_replication_enum_and_server_count():
    assert "is not one of 1, 3, 5" in only_error("queues:\n  faas-request: {streamReplication: 2}\n")
    out = only_error("nats: {profile: dev}\nqueues:\n  faas-request: {streamReplication: 3}\n")
    assert out.startswith("q.yaml:3:37: $.queues.faas-request.streamReplication:") and "1" in out


def test_dev_profile_caps_default_replication():
    result = validate_text("nats: {profile: dev}\nqueues:\n  faas-request: {}\n")
    assert result.config is not None and result.config["queues"]["faas-request"]["streamReplication"] == 1


@pytest.mark.parametrize("n", [1, 2, 4])
def test_production_replicas_odd_at_least_three(n):
    out = only_error(f"nats: {{replicas: {n}}}\nqueues:\n  faas-request: {{}}\n".replace("{replicas", "{replicas"))
    assert out.startswith("q.yaml:1:18: $.nats.replicas: production NATS needs an odd number")


@pytest.mark.parametrize(
    ("value", "message"),
    [("10x", "is not a Go duration"), ("0s", "must be greater than zero")],
)
def test_durations_parse_and_are_positive(value, message):
    out = only_error(f"queues:\n  faas-request:\n    upstreamTimeout: {value}\n")
    assert out.startswith("q.yaml:3:22: $.queues.faas-request.upstreamTimeout:") and message in out


def test_zero_switches_off_max_event_age_and_max_delay_has_a_ceiling():
    result = validate_text("queues:\n  faas-request: {maxEventAge: 0s, retry: {maxRetryAfter: 0s}}\n")
    assert not result.errors, result.problems
    out = only_error("gateway: {maxDelay: 745h}\nqueues:\n  faas-request: {}\n")
    assert out.startswith("q.yaml:1:21: $.gateway.maxDelay:") and "above 744h" in out


def test_max_ack_pending_at_least_inflight_times_replicas():
    out = only_error("queues:\n  faas-request: {maxInflight: 10, replicas: 3, maxAckPending: 29}\n")
    assert "$.queues.faas-request.maxAckPending: maxAckPending 29 is below maxInflight × replicas = 30" in out


def test_max_ack_pending_is_sized_for_the_autoscaler_maximum():
    """Scale-out must not be capped by a consumer sized for the static replica count."""
    scaled = "faas-request: {maxInflight: 10, replicas: 2, autoscaling: {type: keda, maxReplicas: 8}"
    result = validate_text(f"queues:\n  {scaled}}}\n")
    assert result.config is not None and result.config["queues"]["faas-request"]["maxAckPending"] == 160
    out = only_error(f"queues:\n  {scaled}, maxAckPending: 40}}\n")
    assert "maxAckPending 40 is below maxInflight × autoscaling.maxReplicas = 80" in out


def test_max_waiting_at_least_replicas():
    out = only_error("defaults: {maxWaiting: 2}\nqueues:\n  faas-request: {replicas: 3}\n")
    assert out.startswith("q.yaml:1:24: $.defaults.maxWaiting: maxWaiting 2 is below the 3 worker replicas")


def test_ack_wait_minimum_and_shutdown_warning():
    assert "too short" in only_error("queues:\n  faas-request: {ackWait: 1s}\n")
    result = validate_text("queues:\n  faas-request: {upstreamTimeout: 10m}\n")
    assert result.errors == []
    (warning,) = result.problems
    assert warning.severity == "warning" and "shutdownTimeout" in warning.message


def test_retry_waits_ordered():
    out = only_error("queues:\n  faas-request: {retry: {initialWait: 5m, maxWait: 1m}}\n")
    assert "initialWait 5m exceeds retry.maxWait 1m" in out


def test_default_queue_must_exist_unless_strict():
    assert "default queue 'faas-request' is not declared" in only_error("queues:\n  other: {}\n")
    assert validate_text("gateway: {strictRouting: true}\nqueues:\n  other: {}\n").errors == []


def test_external_needs_url_and_url_only_external():
    assert "needs nats.url" in only_error("nats: {profile: external}\nqueues:\n  faas-request: {}\n")
    out = only_error("nats: {url: 'nats://x:4222'}\nqueues:\n  faas-request: {}\n")
    assert out.startswith("q.yaml:1:13: $.nats.url: url is for the external profile only")


def test_auth_and_tls_need_a_secret():
    out = problems("nats: {auth: {method: token}, tls: {enabled: true}}\nqueues:\n  faas-request: {}\n")
    assert len(out) == 2 and all("needs secretName" in p for p in out)


def test_function_url_needs_placeholder_and_scheme():
    assert "no {function} placeholder" in only_error(
        "gateway: {functionURL: 'http://x/'}\nqueues:\n  faas-request: {}\n"
    )
    assert "http:// or https://" in only_error(
        "gateway: {functionURL: 'ftp://{function}'}\nqueues:\n  faas-request: {}\n"
    )


def test_body_size_within_max_payload():
    out = only_error("gateway: {maxBodySize: 2Mi}\nqueues:\n  faas-request: {}\n")
    assert "$.gateway.maxBodySize" in out and "max_payload" in out
    raised = "gateway: {maxBodySize: 2Mi}\nnats: {extraValues: {config: {merge: {max_payload: 4Mi}}}}\n"
    assert validate_text(raised + "queues:\n  faas-request: {}\n").errors == []


def test_empty_and_non_mapping_documents():
    assert "empty" in only_error("")
    assert "is not of type 'object'" in only_error("- a\n- b\n")
    assert "'queues' is a required key" in only_error("nats: {}\n")


def test_yaml_merge_keys_rejected():
    out = problems("queues:\n  faas-request:\n    <<: {maxInflight: 3}\n")
    assert out == ["q.yaml:3:5: $.queues.faas-request: YAML merge keys (<<) are not supported"]


def test_autoscaling_checks():
    assert "exceeds maxReplicas" in only_error(
        "queues:\n  faas-request: {autoscaling: {type: keda, minReplicas: 5, maxReplicas: 2}}\n"
    )
    assert "cannot scale to zero" in only_error("queues:\n  faas-request: {autoscaling: {type: hpa, minReplicas: 0}}\n")
    out = only_error("queues:\n  faas-request: {mode: function, autoscaling: {type: keda}}\n")
    assert out.startswith("q.yaml:2:47: $.queues.faas-request.autoscaling:") and "list the queue's functions" in out


def test_partitions_are_bounded_and_more_than_servers_is_a_warning():
    out = only_error("queues:\n  faas-request:\n    partitions: 33\n")
    assert out.startswith("q.yaml:3:17: $.queues.faas-request.partitions:") and "32" in out
    out = only_error("queues:\n  faas-request:\n    partitions: 0\n")
    assert "$.queues.faas-request.partitions" in out
    found = problems("nats: {profile: dev}\nqueues:\n  faas-request:\n    partitions: 3\n")
    assert len(found) == 1 and ": warning: " in found[0] and "$.queues.faas-request.partitions" in found[0]
    assert "more than the 1 NATS server" in found[0]
    assert problems("queues:\n  faas-request:\n    partitions: 3\n") == []  # production: 3 servers


def test_priorities_need_static_mode():
    out = only_error("queues:\n  faas-request:\n    mode: function\n    priorities: true\n")
    assert out.startswith("q.yaml:4:17: $.queues.faas-request.priorities:") and "static" in out, out
    assert problems("queues:\n  faas-request:\n    priorities: true\n") == []
