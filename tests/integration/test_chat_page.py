"""The chat page at / in a real browser (headless Debian chromium + chromedriver, driven by selenium) against the
session's ingress: a streamed answer with its sources, citations that lead to their source, a refused key, the
keyboard, and, with the page's fetch replaced by canned SSE streams, escaping, "searched for", mid-stream errors and
Stop. A screenshot of the answered page is kept under the test's tmp dir and copied to $TRITONRAG_TEST_ARTIFACTS
(else tests/artifacts/)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TRITONRAG_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TRITONRAG_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS_ENV = "TRITONRAG_TEST_ARTIFACTS"
ARTIFACTS_DEFAULT = Path(__file__).resolve().parents[1] / "artifacts"
QUESTION = "Describe the body of water in Utah"
# a ceiling, not the expected time (2-10 s): the first answer of a freshly started Triton on a busy CPU can take
# minutes (the generator warms up), the tests' other requests wait as long (helpers.post_json: 120 s)
ANSWER_TIMEOUT_S = 240

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None

pytestmark = [
    pytest.mark.skipif(webdriver is None, reason="selenium is not installed (pip install selenium)"),
    pytest.mark.skipif(not (Path(CHROMIUM).is_file() or shutil.which("chromium")),
                       reason=f"no chromium at {CHROMIUM} (apt-get install chromium, or set TRITONRAG_CHROMIUM)"),
    pytest.mark.skipif(not (Path(CHROMEDRIVER).is_file() or shutil.which("chromedriver")),
                       reason=f"no chromedriver at {CHROMEDRIVER} (apt-get install chromium-driver, or set "
                              "TRITONRAG_CHROMEDRIVER)"),
]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--force-prefers-reduced-motion", "--no-first-run",
                "--disable-extensions", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else shutil.which("chromedriver")
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"chromium could not start under chromedriver: {exc.msg}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def keep_screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Save a screenshot under the test's tmp dir and copy it to the artefacts folder."""
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot)), "the screenshot was not written"
    folder = Path(os.environ.get(ARTIFACTS_ENV) or ARTIFACTS_DEFAULT)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, folder / name)
    return shot


def wait(driver, condition, timeout=10, message=""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message)


def open_page(driver, ingress, key: str | None) -> None:
    """Load the page fresh, with ``key`` stored (None: no key), and wait until the flows are listed."""
    driver.get(ingress.url + "/")
    driver.execute_script("localStorage.clear(); if (arguments[0]) localStorage.setItem('tritonrag.apiKey', "
                          "arguments[0]);", key)
    driver.refresh()
    if key is not None:
        wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#flow option")) > 1,
             message="the flows were not loaded from /v1/models")


def last_turn(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#messages .turn.assistant")[-1]


def wait_answered(driver, timeout=ANSWER_TIMEOUT_S):
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".turn.assistant")
         and last_turn(d).get_attribute("aria-busy") == "false", timeout, "the answer did not finish")
    return last_turn(driver)


def active_id(driver) -> str:
    return driver.execute_script("return document.activeElement && document.activeElement.id")


def page_errors(driver) -> list[str]:
    """The browser console's errors, but the failed loads (the 401s this test provokes on purpose)."""
    try:
        entries = driver.get_log("browser")
    except WebDriverException:  # pragma: no cover - a driver without logs
        return []
    return [e["message"] for e in entries
            if e.get("level") == "SEVERE" and "Failed to load resource" not in e["message"]]


# Records, in the page, what the newest answer looked like at each DOM change: is it streaming, its text length,
# whether its sources are shown.
OBSERVE = """
window.__seen = [];
new MutationObserver(() => {
  const turns = document.querySelectorAll('#messages .turn.assistant');
  const t = turns[turns.length - 1];
  if (!t) return;
  const a = t.querySelector('.answer');
  window.__seen.push({busy: t.getAttribute('aria-busy') === 'true', pending: a.classList.contains('pending'),
                      length: a.classList.contains('pending') ? 0 : a.textContent.length,
                      sources: t.querySelectorAll('.sources .source').length});
}).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true,
                                                 attributes: true});
"""


def test_an_answer_streams_in_with_its_sources_and_citations(browser, ingress, tmp_path):
    open_page(browser, ingress, None)
    try:
        key = browser.find_element(By.ID, "api-key")
        wait(browser, lambda d: "attention" in d.find_element(By.ID, "key-field").get_attribute("class"),
             message="the page did not ask for a key")
        assert active_id(browser) == "api-key", "the focus goes to the key field when the server wants one"
        key.send_keys(ingress.api_key, Keys.ENTER)  # Enter saves the key and moves on to the question
        wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#flow option")) > 1,
             message="the flows were not loaded with the key")
        assert browser.execute_script("return localStorage.getItem('tritonrag.apiKey')") == ingress.api_key
        flows = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#flow option")]
        assert "rag" in flows and "rag-chat" in flows and "embedder" not in flows, flows
        assert browser.find_element(By.ID, "doc-filter").tag_name in ("select", "input")
        if browser.find_element(By.ID, "doc-filter").tag_name == "select":
            assert Select(browser.find_element(By.ID, "doc-filter")).first_selected_option.text == "All documents"
        Select(browser.find_element(By.ID, "flow")).select_by_value("rag")
        tokens = browser.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("16")
        for control in ("api-key", "flow", "doc-filter", "max-tokens", "question"):  # every control has a label
            assert browser.execute_script(
                "const e = document.getElementById(arguments[0]); return e.labels && e.labels.length > 0 || "
                "!!e.getAttribute('aria-label')", control), control

        question = browser.find_element(By.ID, "question")
        question.click()
        question.send_keys("Describe the body", Keys.SHIFT, Keys.ENTER, Keys.SHIFT)  # Shift+Enter: a new line
        assert "\n" in question.get_attribute("value") and not browser.find_elements(By.CSS_SELECTOR, ".turn")
        question.send_keys(Keys.CONTROL, "a", Keys.CONTROL, Keys.DELETE)
        browser.execute_script(OBSERVE)
        started = time.monotonic()
        question.send_keys(QUESTION, Keys.ENTER)  # Enter sends
        wait(browser, lambda d: not d.find_element(By.ID, "stop").get_attribute("disabled"), 5,
             "Stop is not enabled while answering")
        turn = wait_answered(browser)
        elapsed = time.monotonic() - started
        assert not turn.find_elements(By.CSS_SELECTOR, ".error"), turn.text
        answer = turn.find_element(By.CSS_SELECTOR, ".answer").text.strip()
        assert answer, "an answer was shown"
        seen = browser.execute_script("return window.__seen")
        streaming = sorted({s["length"] for s in seen if s["busy"] and s["length"] > 0})
        assert len(streaming) >= 2, f"the answer arrived in one piece, not streamed: {streaming} ({elapsed:.1f} s)"
        assert any(s["busy"] and s["pending"] and s["sources"] for s in seen), \
            "the sources are shown with the first chunk, before the answer's text"
        sources = turn.find_elements(By.CSS_SELECTOR, ".sources .source")
        assert sources, "the sources are listed"
        for source in sources:
            assert source.find_element(By.CSS_SELECTOR, ".source-title").text.strip()
            assert source.find_element(By.CSS_SELECTOR, ".source-snippet").text.strip()
        assert "salt" in " ".join(s.text.lower() for s in sources), "the passage about the Great Salt Lake"
        assert browser.find_element(By.ID, "stop").get_attribute("disabled")
        assert active_id(browser) == "question", "the focus returns to the question"
        citations = turn.find_elements(By.CSS_SELECTOR, "a.citation")
        if citations:
            target = citations[-1].get_attribute("href").rsplit("#", 1)[1]
            citations[-1].click()
            wait(browser, lambda d: "highlight" in d.find_element(By.ID, target).get_attribute("class"), 5,
                 "the cited source is not highlighted")
            assert active_id(browser) == target
        assert browser.execute_script("return document.querySelectorAll('.answer img, .answer script').length") == 0
    finally:
        keep_screenshot(browser, tmp_path, "chat_page.png")  # the page as answered, or as it failed
    assert not page_errors(browser)


def test_a_wrong_key_shows_an_error_and_asks_for_the_key(browser, ingress, tmp_path):
    open_page(browser, ingress, ingress.api_key)
    key = browser.find_element(By.ID, "api-key")
    key.clear()
    key.send_keys("not-the-key-" + "0" * 20)
    question = browser.find_element(By.ID, "question")
    question.click()
    question.send_keys("Who is Passepartout?", Keys.ENTER)
    turn = wait_answered(browser, 20)
    error = turn.find_element(By.CSS_SELECTOR, ".error")
    assert error.get_attribute("role") == "alert"
    assert "invalid API key" in error.text and "401" in error.text, error.text
    assert "attention" in browser.find_element(By.ID, "key-field").get_attribute("class")
    assert key.get_attribute("aria-invalid") == "true"
    assert active_id(browser) == "api-key", "the page asks for the key"
    keep_screenshot(browser, tmp_path, "chat_page_wrong_key.png")
    key.clear()
    key.send_keys(ingress.api_key)
    browser.find_element(By.ID, "save-key").click()
    wait(browser, lambda d: "attention" not in d.find_element(By.ID, "key-field").get_attribute("class"), 10,
         "the right key was not accepted")
    browser.find_element(By.ID, "new-conversation").click()
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages .turn")
    assert not page_errors(browser)


# The page's fetch, replaced for /v1/chat/completions by a canned SSE body: `events` (strings sent as they are, so
# an event may be split across reads), then, when `hang`, nothing more until the request is aborted.
FAKE_STREAM = """
const [events, hang] = arguments;
window.__requests = [];
const realFetch = window.__realFetch || window.fetch;
window.__realFetch = realFetch;
window.fetch = (url, options) => {
  if (!String(url).includes('/v1/chat/completions')) return realFetch(url, options);
  window.__requests.push(JSON.parse(options.body));
  const encoder = new TextEncoder();
  const body = new ReadableStream({
    async start(controller) {
      options.signal.addEventListener('abort',
        () => controller.error(new DOMException('The user aborted a request.', 'AbortError')));
      for (const e of events) {
        await new Promise((r) => setTimeout(r, 20));
        if (options.signal.aborted) return;
        controller.enqueue(encoder.encode(e));
      }
      if (!hang) controller.close();
    },
  });
  return Promise.resolve(new Response(body, {status: 200, headers: {'Content-Type': 'text/event-stream'}}));
};
"""
EVIL = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def chunk(delta=None, finish=None, rag=None) -> dict:
    body = {"object": "chat.completion.chunk", "model": "rag-chat",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if rag is not None:
        body["rag"] = rag
    return body


def sse(*chunks) -> list[str]:
    return [f"data: {json.dumps(c) if not isinstance(c, str) else c}\n\n" for c in chunks]


def test_server_text_is_escaped_and_citations_lead_to_their_source(browser, ingress):
    open_page(browser, ingress, ingress.api_key)
    sources = [{"chunk_id": 7, "score": 0.9, "source": "a.txt", "title": "Title " + EVIL, "section": "S1",
                "snippet": "snippet one " + EVIL},
               {"chunk_id": 8, "score": 0.8, "source": "b.txt", "title": "Second", "section": "S2",
                "snippet": "snippet two"}]
    events = sse(chunk({"role": "assistant", "content": ""}, rag={"sources": sources}),
                 chunk({"content": "It is " + EVIL + " "}), chunk({"content": "salty [2]"}),
                 chunk({"content": " and big [1, 2]. Not a source: [9]."}),
                 chunk({}, "stop", {"sources": sources, "citations": [{"n": 2}, {"n": 1}], "finish_reason": "stop",
                                    "query": "What is the lake " + EVIL + "?"}), "[DONE]")
    # split the stream at awkward places: inside an event and between its two newlines
    raw = "".join(events)
    pieces = [raw[:37], raw[37:120], raw[120:raw.index("\n\n", 200) + 1], raw[raw.index("\n\n", 200) + 1:]]
    browser.execute_script(FAKE_STREAM, pieces, False)
    Select(browser.find_element(By.ID, "flow")).select_by_value("rag-chat")
    question = browser.find_element(By.ID, "question")
    question.send_keys("What is the lake?", Keys.ENTER)
    turn = wait_answered(browser, 10)
    assert not turn.find_elements(By.CSS_SELECTOR, ".error"), turn.text
    answer = turn.find_element(By.CSS_SELECTOR, ".answer")
    assert EVIL in answer.text and "[9]" in answer.text, answer.text
    assert browser.execute_script("return document.querySelectorAll('#messages img, #messages script').length "
                                  "+ (window.__pwned || 0)") == 0
    assert EVIL in turn.find_element(By.CSS_SELECTOR, ".source-title").text
    links = answer.find_elements(By.CSS_SELECTOR, "a.citation")
    assert [a.text for a in links] == ["[2]", "[1]", "[2]"]
    assert "Searched for: What is the lake " + EVIL + "?" in turn.find_element(By.CSS_SELECTOR, ".query").text
    cited = turn.find_elements(By.CSS_SELECTOR, ".source.cited")
    assert len(cited) == 2
    links[0].click()
    second = turn.find_element(By.CSS_SELECTOR, ".source[data-n='2']")
    wait(browser, lambda d: "highlight" in second.get_attribute("class"), 5, "source 2 is not highlighted")
    links[1].click()
    wait(browser, lambda d: "highlight" not in second.get_attribute("class"), 5)
    assert "highlight" in turn.find_element(By.CSS_SELECTOR, ".source[data-n='1']").get_attribute("class")
    assert browser.execute_script("return window.__requests[0]")["model"] == "rag-chat"

    # the conversation is sent as messages on the next turn
    browser.execute_script(FAKE_STREAM, sse(chunk({"role": "assistant", "content": ""}, rag={"sources": []}),
                                            chunk({"content": "Yes."}), chunk({}, "stop", {"sources": []}),
                                            "[DONE]"), False)
    question.send_keys("Is it salty?", Keys.ENTER)
    turn = wait_answered(browser, 10)
    sent = browser.execute_script("return window.__requests[0]")
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][0]["content"] == "What is the lake?" and sent["messages"][2]["content"] == "Is it salty?"
    assert sent["messages"][1]["content"].startswith("It is " + EVIL)
    assert turn.find_element(By.CSS_SELECTOR, ".sources summary").text == "No passages found"

    # a failure in mid-stream is shown in the conversation, and the turn stays out of the history
    browser.execute_script(FAKE_STREAM, sse(chunk({"role": "assistant", "content": ""}, rag={"sources": []}),
                                            chunk({"content": "Part"}),
                                            {"error": {"message": "the generator failed", "code": "x"}}), False)
    question.send_keys("Fail please", Keys.ENTER)
    turn = wait_answered(browser, 10)
    assert "the generator failed" in turn.find_element(By.CSS_SELECTOR, ".error").text

    # Stop aborts a stream that would never end; Escape does too
    for how in ("button", "escape"):
        browser.execute_script(FAKE_STREAM, sse(chunk({"role": "assistant", "content": ""}, rag={"sources": []}),
                                                chunk({"content": "Never ending"})), True)
        question.send_keys("Go on", Keys.ENTER)
        wait(browser, lambda d: "Never ending" in last_turn(d).find_element(By.CSS_SELECTOR, ".answer").text, 5)
        if how == "button":
            browser.find_element(By.ID, "stop").click()
        else:
            question.send_keys(Keys.ESCAPE)
        turn = wait_answered(browser, 5)
        assert "Stopped." in turn.text and not turn.find_elements(By.CSS_SELECTOR, ".error")
        assert not browser.find_element(By.ID, "send").get_attribute("disabled")
        assert active_id(browser) == "question"
    browser.execute_script(FAKE_STREAM, sse(chunk({"content": "x"}), "[DONE]"), False)
    question.send_keys("Once more", Keys.ENTER)
    wait_answered(browser, 10)
    sent = browser.execute_script("return window.__requests[0]")
    assert len(sent["messages"]) == 9, "the stopped answers' partial text is kept, the failed turn is not"
    browser.find_element(By.ID, "new-conversation").click()
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages .turn")
    assert browser.find_element(By.ID, "empty-state").is_displayed()
    assert not page_errors(browser)


# /v1/documents answered in the page (installed before the page's script runs): two documents, truncated
DOCUMENTS_STUB = """
const realFetch = window.fetch;
window.fetch = (url, options) => {
  if (!String(url).includes('/v1/documents')) return realFetch(url, options);
  const body = {object: 'list', version: 'v000042', truncated: true, data: [
    {source: 'around_the_world.txt', title: 'Around the World in 80 Days', chunks: 812},
    {source: 'notes.txt', title: 'Notes <b>bold</b>', chunks: 3}]};
  return Promise.resolve(new Response(JSON.stringify(body), {status: 200,
                                                             headers: {'Content-Type': 'application/json'}}));
};
"""


def test_the_document_filter_lists_the_documents_and_sends_the_chosen_source(browser, ingress):
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": DOCUMENTS_STUB})
    try:
        open_page(browser, ingress, ingress.api_key)
        wait(browser, lambda d: d.find_element(By.ID, "doc-filter").tag_name == "select"
             and len(d.find_elements(By.CSS_SELECTOR, "#doc-filter option")) > 1, 5, "the documents are not listed")
        documents = Select(browser.find_element(By.ID, "doc-filter"))
        assert [o.text for o in documents.options] == [
            "All documents", "Around the World in 80 Days (around_the_world.txt)", "Notes <b>bold</b> (notes.txt)",
            "Other document…"]
        assert "v000042" in browser.find_element(By.ID, "kb-version").text
        question = browser.find_element(By.ID, "question")
        done = sse(chunk({"role": "assistant", "content": ""}, rag={"sources": []}), chunk({"content": "ok"}),
                   chunk({}, "stop", {"sources": []}), "[DONE]")

        def ask() -> dict:
            browser.execute_script(FAKE_STREAM, done, False)
            question.send_keys("Anything?", Keys.ENTER)
            wait_answered(browser, 10)
            return browser.execute_script("return window.__requests[0]")

        assert "filter" not in ask(), "all documents: no filter"
        documents.select_by_value("notes.txt")
        assert ask()["filter"] == {"source": "notes.txt"}
        documents.select_by_value("__other__")
        browser.find_element(By.ID, "doc-filter-other").send_keys("other.txt")
        assert ask()["filter"] == {"source": "other.txt"}
        Select(browser.find_element(By.ID, "flow")).select_by_value("llm")
        assert not browser.find_element(By.ID, "doc-filter").is_enabled(), "llm does not retrieve: no filter"
        assert "filter" not in ask()
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
    assert not page_errors(browser)
