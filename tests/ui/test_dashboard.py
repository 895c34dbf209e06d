"""The dashboard in a real browser, against a running gateway and supervisor.

A person signs in, submits files, watches the task progress live, pauses and
resumes it, finds the failed document, retries it and sees the task complete;
each step is a screenshot under ``test-output/ui/``.
"""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.gateway.conftest import Env
from tests.ui.conftest import Shots

DOCUMENTS = 200
FAILING = "doc-007.txt"
STEP = 15_000  # ms a step may take before the test fails


def files(n: int) -> list[dict[str, object]]:
    return [
        {
            "name": f"doc-{i:03d}.txt",
            "mimeType": "text/plain",
            "buffer": f"document {i}\n".encode(),
        }
        for i in range(n)
    ]


async def sign_in(page: Page, env: Env, tenant: str = "acme") -> None:
    await page.goto(env.url + "/")
    await page.get_by_label("API token").fill(env.tokens[tenant])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Tasks")).to_be_visible()


def state(page: Page):
    return page.locator("#task-state")


def button(page: Page, name: str):
    return page.get_by_role("button", name=name, exact=True)


async def progress(page: Page) -> float:
    return float(await page.locator("#task-progress").evaluate("p => p.value"))


async def test_sign_in_refuses_a_wrong_token_and_keeps_it_out_of_the_url(
    ui_env: Env, page: Page, shots: Shots
) -> None:
    await page.goto(ui_env.url + "/")
    await page.get_by_label("API token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#sign-in-error")).to_contain_text("Not signed in")
    await shots.take(page, "wrong-token")

    await sign_in(page, ui_env)
    assert ui_env.tokens["acme"] not in page.url
    stored = await page.evaluate("sessionStorage.getItem('taskpoint.token')")
    assert stored == ui_env.tokens["acme"]
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API token")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_submit_watch_pause_resume_and_retry_a_failed_document(
    ui_env: Env, page: Page, shots: Shots
) -> None:
    await page.goto(ui_env.url + "/")
    await shots.take(page, "sign-in")
    await sign_in(page, ui_env)
    await expect(page.get_by_text("No task yet")).to_be_visible()

    # The API's error body is shown when it refuses the upload.
    await page.get_by_label("Type").fill("scripted")
    await page.get_by_label("Document files").set_input_files(files(2))
    await page.get_by_label("Attempts per document").fill("0")
    await page.get_by_role("button", name="Submit task").click()
    await expect(page.locator("#submit-error")).to_contain_text("max_attempts")
    await shots.take(page, "upload-refused")

    await page.get_by_label("Document files").set_input_files(files(DOCUMENTS))
    await page.get_by_label("Attempts per document").fill("1")
    await page.get_by_role("button", name="Submit task").click()
    await expect(page.locator("#task-view")).to_be_visible()
    await expect(state(page)).to_have_text("running", timeout=STEP)
    await expect(page.locator("#live")).to_have_text("live", timeout=STEP)

    # Live: the bar moves while the task runs, with no reload.
    await page.wait_for_function(
        "() => { const p = document.getElementById('task-progress');"
        " return p.value > 0 && p.value < 0.5; }",
        timeout=STEP,
    )
    first = await progress(page)
    await page.wait_for_function(
        f"() => document.getElementById('task-progress').value > {first}",
        timeout=STEP,
    )
    await expect(page.locator("#task-progress-text")).to_contain_text(
        "documents finished"
    )
    await expect(button(page, "Resume")).to_be_disabled()
    await expect(page.locator("#why-resume")).to_contain_text("already running")
    await shots.take(page, "running-live")
    await shots.take(page, "running-live-narrow", narrow=True)

    await button(page, "Pause").click()
    await expect(state(page)).to_have_text("paused", timeout=STEP)
    await expect(button(page, "Pause")).to_be_disabled()
    await expect(page.locator("#why-pause")).to_contain_text("already paused")
    await expect(button(page, "Resume")).to_be_enabled()
    timeline = page.locator("#timeline")
    await expect(timeline).to_contain_text("running → pausing")
    await expect(timeline).to_contain_text("pausing → paused")
    await expect(timeline.locator("li").filter(has_text="→ pausing")).to_contain_text(
        "asked by request"
    )
    paused_at = await progress(page)
    assert paused_at < 1
    await shots.take(page, "paused")

    await button(page, "Resume").click()
    await expect(timeline).to_contain_text("paused → running", timeout=STEP)
    await shots.take(page, "resumed")
    await expect(state(page)).to_have_text("completed with failures", timeout=STEP * 2)
    failed = page.locator("#documents li.document")
    await expect(failed).to_have_count(1)
    await expect(failed).to_contain_text(FAILING)
    await expect(failed).to_contain_text("attempts 1")
    await expect(failed).to_contain_text("is unreadable")
    await expect(button(page, "Retry failed documents")).to_be_enabled()
    await shots.take(page, "failed-document-listed")
    await shots.take(page, "failed-document-listed-narrow", narrow=True)

    ui_env.processor.permanent.clear()
    await button(page, "Retry failed documents").click()
    await expect(state(page)).to_have_text("completed", timeout=STEP)
    await expect(page.locator("#documents-empty")).to_have_text("No failed document.")
    await expect(page.locator("#task-progress-text")).to_contain_text(
        f"100 % · {DOCUMENTS} of {DOCUMENTS}"
    )
    await expect(button(page, "Cancel task…")).to_be_disabled()
    await shots.take(page, "retried-completed")

    await page.get_by_label("Show").select_option("completed")
    retried = page.locator("#documents li.document").first
    await expect(retried).to_contain_text("doc-000.txt")
    await retried.get_by_role("button", name="Show the result of doc-000.txt").click()
    await expect(page.locator("#result-body")).to_contain_text('"doc": "doc-000.txt"')
    await shots.take(page, "document-result")

    # A refused request is in the timeline, as refused, with its reason.
    code, _, _ = await ui_env.call("POST", _task_path(page.url) + "/resume")
    assert code == 409
    await page.reload()
    refused = timeline.locator("li[data-outcome=refused]")
    await expect(refused).to_contain_text("Refused", timeout=STEP)
    await expect(refused).to_contain_text("resume refused")
    await shots.take(page, "timeline-with-refusal")

    await page.get_by_role("link", name="All tasks").click()
    listed = page.locator("#tasks li.task")
    await expect(listed).to_have_count(1)
    await expect(listed).to_contain_text("completed")
    await expect(listed).to_contain_text(f"{DOCUMENTS} of {DOCUMENTS} documents")
    await shots.take(page, "task-list")
    await shots.take(page, "task-list-narrow", narrow=True)


async def test_cancel_asks_for_confirmation(
    ui_env: Env, page: Page, shots: Shots
) -> None:
    task_id = await ui_env.submit(200)
    await sign_in(page, ui_env)
    listed = page.locator("#tasks li.task")
    await expect(listed).to_have_count(1)
    await expect(listed.locator(".eta")).to_contain_text("ETA")
    await shots.take(page, "task-list-live")
    await page.locator("#tasks a.task-link").click()
    await expect(state(page)).to_have_text("running", timeout=STEP)
    assert task_id in page.url

    await button(page, "Cancel task…").click()
    dialog = page.get_by_role("dialog", name="Cancel this task?")
    await expect(dialog).to_be_visible()
    await shots.take(page, "cancel-confirmation")
    await dialog.get_by_role("button", name="Keep it running").click()
    await expect(dialog).to_be_hidden()
    await expect(state(page)).to_have_text("running")

    await button(page, "Cancel task…").click()
    await dialog.get_by_role("button", name="Cancel the task").click()
    await expect(state(page)).to_have_text("cancelled", timeout=STEP)
    await expect(page.locator("#why-retry-failed")).to_contain_text(
        "a cancelled task has nothing to retry"
    )
    await shots.take(page, "cancelled")


def _task_path(url: str) -> str:
    match = re.search(r"#/task/(.+)$", url)
    assert match, url
    return f"/api/v1/task/{match.group(1)}"


async def test_the_page_and_its_files_are_served_with_a_strict_policy(
    ui_env: Env,
) -> None:
    status, body, response = await ui_env.call("GET", "/", tenant=None)
    assert status == 200
    assert response.content_type == "text/html"
    assert '<script type="module" src="/static/app.js">' in body
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "form-action 'none'" in policy

    status, body, response = await ui_env.call("GET", "/static/app.js", tenant=None)
    assert status == 200
    assert "javascript" in response.content_type
    assert "innerHTML" not in body

    status, body, _ = await ui_env.call(
        "GET", "/static/..%2f..%2fpyproject.toml", tenant=None
    )
    assert status in (403, 404)
    assert "[project]" not in str(body)
