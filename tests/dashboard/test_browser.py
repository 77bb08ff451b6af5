"""The dashboard in a real browser (headless Debian chromium via chromium-driver): nats-server, a worker, a gateway
serving the dashboard behind its token, and `jetqueue dashboard`, all real processes; calls submitted through the
gateway; then clicked through as an operator would: sign in, a dead letter appears live, replay runs it, the call
lookup shows `succeeded`, pause holds a new call, resume runs it.

JETQUEUE_SCREENSHOTS=docs/img saves the screenshots docs/dashboard.md shows (default: the test's tmp dir)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.dashboard.stack import TOKEN, browser, browser_missing, running_stack, until

MISSING = browser_missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"no browser test: {MISSING}")


def test_operator_clicks_through_the_dashboard(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    shots = Path(os.environ.get("JETQUEUE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with running_stack(tmp_path / "stack") as s:
        b = browser()
        try:
            css = lambda q: b.find_elements(By.CSS_SELECTOR, q)  # noqa: E731
            text = lambda q: " ".join(e.text for e in css(q))  # noqa: E731

            def secret_free() -> None:
                assert TOKEN not in b.page_source

            # Not signed in: the gateway sends the browser to the sign-in page; a wrong token is refused.
            b.get(s.gateway + "/dashboard/")
            until(lambda: b.current_url.endswith("/dashboard/login"), "the sign-in page")
            css("input[name=token]")[0].send_keys("not-the-token" + Keys.ENTER)
            until(lambda: "wrong credentials" in b.page_source, "the refusal")
            b.save_screenshot(str(shots / "dashboard-login.png"))
            css("input[name=token]")[0].send_keys(TOKEN + Keys.ENTER)
            until(lambda: css("#queue-faas-request"), "the overview with the queue")
            secret_free()

            # A failing call: its dead letter shows up on the open page by itself (the live part refreshes).
            failed = s.submit("flaky", b'{"order": 42}', Cookie="session=c2VjcmV0")
            until(lambda: text("#queue-faas-request tr.queue-row td.dead") == "1", "the dead letter, live")
            b.save_screenshot(str(shots / "dashboard-queues.png"))

            css("#queue-faas-request tr.queue-row td.dead a")[0].click()
            until(lambda: css(f"tr.dead-letter[data-call-id='{failed}']"), "the dead-letter page")
            row = f"tr.dead-letter[data-call-id='{failed}']"
            assert text(row + " td.reason") == "exhausted"
            assert "database <b>unreachable</b>" in text(row + " td.error")  # shown as text, never as markup
            css(row + " details summary")[0].click()
            headers = text(row + " table.headers")
            # The caller's cookie went along to the function: its dead letter keeps it redacted.
            assert "Jq-Header-Cookie [redacted]" in headers
            assert "c2VjcmV0" not in b.page_source
            secret_free()
            b.save_screenshot(str(shots / "dashboard-dead-letters.png"))

            # Replay, now that the function works: the call runs again and succeeds.
            s.flag.touch()
            css(row + " button.replay")[0].click()
            until(lambda: "replayed 1 call(s)" in text("#flash"), "the replay's message")
            assert not css(row)
            lookup = css("header input[name=id]")[0]
            lookup.send_keys(failed + Keys.ENTER)

            def succeeded() -> bool:
                if text("#call-state") != "succeeded":
                    b.refresh()
                    return False
                return True

            until(succeeded, "the call lookup showing succeeded")
            assert "attempt 1" in text("ol.history")
            secret_free()
            b.save_screenshot(str(shots / "dashboard-call.png"))

            # Pause: a call submitted meanwhile is kept, not run; resume runs it.
            b.get(s.gateway + "/dashboard/")
            css("#queue-faas-request tr.queue-row input[name=until]")[0].send_keys("1h")
            css("#queue-faas-request tr.queue-row button.pause")[0].click()
            until(lambda: "paused queue faas-request" in text("#flash"), "the pause's message")
            assert "paused" in css("#queue-faas-request tr.queue-row")[0].get_attribute("class")
            held = s.submit("ok")
            until(lambda: text("#queue-faas-request tr.function-row[data-function=ok] td.pending") == "1", "held call")
            time.sleep(2)  # a worker that ignored the pause would have run it by now
            assert s.status(held)["state"] == "queued"
            b.save_screenshot(str(shots / "dashboard-paused.png"))
            css("#queue-faas-request tr.queue-row button.resume")[0].click()
            until(lambda: "resumed queue faas-request" in text("#flash"), "the resume's message")
            until(lambda: s.status(held)["state"] == "succeeded", "the held call run after resume")

            # `jetqueue dashboard` on its own (no credentials configured: it listens on loopback only).
            b.get(s.dashboard + "/")
            until(lambda: css("#queue-faas-request"), "the standalone dashboard's overview")
            assert text("#queue-faas-request tr.queue-row td.dead") == "0"
        finally:
            b.quit()
