"""`jetqueue validate` checks queues.<q>.schedules as the worker and nats-server will: every problem at its place."""

from __future__ import annotations

from jetqueue.generator.validate import validate_text

QUEUES = """\
gateway:
  callbackHosts: [hooks.example]
queues:
  faas-request:
    schedules:
      nightly:
        function: report
        cron: "0 0 2 * * *"
        timeZone: Europe/Berlin
        body: '{"all": true}'
        headers: {Content-Type: application/json}
      Bad_Name:
        function: report
        cron: "@hourly"
      broken:
        function: resize
        cron: "0 0 25 * * *"
        callbackUrl: https://evil.example/x
        headers: {X-Call-Id: x}
      zoned:
        function: resize
        cron: "@every 90s"
        timeZone: Europe/Berlin
      nowhere:
        function: report
        cron: "0 0 0 * * *"
        timeZone: Mars/Olympus
      elsewhere:
        function: train
        cron: "0 */5 * * * *"
      empty: {}
  ml:
    functions: [train]
"""


def test_every_schedule_problem_at_its_place():
    result = validate_text(QUEUES)
    assert result.config is None
    got = [p.format("queues.yaml") for p in result.problems]
    s = "$.queues.faas-request.schedules"
    assert got == [
        f"queues.yaml:12:7: {s}.Bad_Name: name 'Bad_Name' does not match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        f"queues.yaml:17:15: {s}.broken.cron: hour '25': 25 is above the maximum 23",
        f"queues.yaml:18:22: {s}.broken.callbackUrl: the callback URL host 'evil.example' is not in the allowed "
        "callback hosts",
        f"queues.yaml:19:18: {s}.broken.headers: header 'X-Call-Id' is not passed on to functions",
        f"queues.yaml:22:15: {s}.zoned.cron: @every counts from when the schedule was stored: it takes no time zone "
        "(leave it UTC)",
        f"queues.yaml:27:19: {s}.nowhere.timeZone: unknown time zone 'Mars/Olympus': use an IANA name such as UTC or "
        "Europe/Berlin",
        f"queues.yaml:29:19: {s}.elsewhere.function: function 'train' is routed to queue 'ml'; declare its schedule "
        "there (a function runs on one queue)",
        f"queues.yaml:31:14: {s}.empty: function is missing: name the function called at every tick",
        f"queues.yaml:31:14: {s}.empty: cron is missing: say when, e.g. 0 0 2 * * *",
    ]


def test_a_queue_that_may_scale_to_zero_is_warned():
    text = (
        "queues:\n  faas-request:\n    autoscaling: {type: keda, minReplicas: 0}\n"
        "    schedules:\n      tick: {function: echo, cron: '@hourly'}\n"
    )
    result = validate_text(text)
    assert result.config is not None
    (warning,) = result.problems
    assert warning.severity == "warning" and warning.path == ("queues", "faas-request", "schedules")
    assert "no tick becomes a call" in warning.message


def test_a_good_schedule_resolves_with_its_defaults():
    text = "queues:\n  faas-request:\n    schedules:\n      tick: {function: echo, cron: '*/10 * * * *'}\n"
    result = validate_text(text)
    assert result.config is not None, result.problems
    assert result.config["queues"]["faas-request"]["schedules"]["tick"] == {
        "function": "echo",
        "cron": "*/10 * * * *",
        "timeZone": "UTC",
        "body": "",
        "headers": {},
        "callbackUrl": "",
        "failureCallbackUrl": "",
    }
