"""The playground page as a person uses it: Debian's chromium, headless, driven by playwright.

A real `phi3e2e serve` (with an API key: the browser logs in with it as a password) on a copy of
the `finished_run` project. Chat: a question, a streamed answer. Compare: a held-out question
from the run's eval split, the base int4 model's and the fine-tuned model's answers side by
side, and the reference answer. The tiny model's words are gibberish: the tests check that
answers stream in and finish, never what they say.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import API_KEY, Server, health
from playwright.sync_api import expect, sync_playwright

from phi3e2e.project import Project

CHROMIUM = Path("/usr/bin/chromium")
# Headless and offline: nothing but the page's own server is contacted.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ANSWER_TIMEOUT_MS = 120_000  # the compare view's first use builds the base model as int4 (~10 s on 2 cores)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(finished_run, tmp_path_factory):
    original, run_dir = finished_run
    project = Project(tmp_path_factory.mktemp("playground") / "project")
    shutil.copytree(original.root, project.root, symlinks=True)
    server = Server(project, "--api-key", API_KEY)
    yield server, project.gen_model / run_dir.name
    server.stop()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM.is_file(), "needs Debian's chromium: apt-get install -y chromium (`make test` installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, served):
    server, _ = served
    context = browser.new_context(http_credentials={"username": "playground", "password": API_KEY})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    yield page
    context.close()
    assert not errors, errors


def set_lengths(page, tokens: int) -> None:
    """Answers of exactly `tokens` tokens (min = max), so there is always something to stream."""
    page.click("#settings summary")
    page.fill("#max-tokens", str(tokens))
    page.fill("#min-tokens", str(tokens))


def test_chat_streams_an_answer_from_the_run(page, served):
    _, run_dir = served
    expect(page.locator("#model")).to_have_value(run_dir.name)  # the newest run, preselected
    set_lengths(page, 24)
    page.fill("#chat-input", "How long does shipping take?")
    page.click("#chat-send")
    reply = page.locator("#chat-log .msg.assistant").last
    expect(reply).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    expect(reply.locator(".meta")).to_have_text("finish_reason: length, 24 tokens")
    assert int(reply.locator(".text").get_attribute("data-pieces")) > 1  # shown piece by piece, not at the end
    assert reply.locator(".text").inner_text().strip()
    expect(page.locator("#chat-log .msg.user")).to_have_text("How long does shipping take?")


def test_stop_ends_a_long_answer_and_its_generation(page, served):
    server, _ = served
    before = health(server)["answers_cancelled"]
    set_lengths(page, 4000)
    page.fill("#chat-input", "Tell me everything about your coffee.")
    stop_at = page.locator("#chat-stop").bounding_box()
    page.click("#chat-send")
    reply = page.locator("#chat-log .msg.assistant").last
    expect(reply.locator(".text")).not_to_be_empty(timeout=ANSWER_TIMEOUT_MS)
    assert page.locator("#chat-stop").bounding_box() == stop_at  # the answer scrolls in the log; Stop stays put
    page.click("#chat-stop")
    expect(reply).to_have_attribute("data-state", "stopped")
    _wait_for(lambda: health(server)["answers_cancelled"] == before + 1)  # the server stopped generating it


def test_compare_shows_base_and_fine_tuned_answers_side_by_side(page, served):
    _, run_dir = served
    set_lengths(page, 16)
    page.click("#tab-compare")
    examples = page.locator("#compare-examples option")
    expect(examples.nth(1)).to_be_attached()  # held-out questions, after the "(type your own)" entry
    page.select_option("#compare-examples", index=1)

    first = _first_eval_row(run_dir)
    expect(page.locator("#compare-question")).to_have_value(first["Question"])
    expect(page.locator("#reference")).to_have_text(first["Best Answer"])
    expect(page.locator("#tuned-name")).to_have_text(run_dir.name)
    expect(page.locator("#base-name")).to_have_text(re.compile(r"^base/"))

    page.click("#compare-send")
    for side in ("base", "tuned"):
        expect(page.locator(f"#answer-{side}")).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator(f"#meta-{side}")).to_have_text("finish_reason: length, 16 tokens")
        assert page.locator(f"#answer-{side}").inner_text().strip()
        assert int(page.locator(f"#answer-{side}").get_attribute("data-pieces")) > 1
    base, tuned = page.locator("#answer-base").bounding_box(), page.locator("#answer-tuned").bounding_box()
    assert base["x"] + base["width"] <= tuned["x"] and abs(base["y"] - tuned["y"]) < 5  # next to each other


def _first_eval_row(run_dir: Path) -> dict:
    dataset = json.loads((run_dir / "run.json").read_text())["dataset"]
    with open(run_dir.parents[1] / dataset / "eval.jsonl", encoding="utf-8") as f:
        return json.loads(f.readline())


def _wait_for(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
