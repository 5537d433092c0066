"""The mesh console in a real browser (Debian's chromium driven by chromium-driver) against a running mesh:
sign in with a dev token, browse and search the marketplace, watch a new agent appear without a reload
(a hostile card renders as text and the CSP blocks inline script), open a finished task's explanation
(its DAG and steps) and approve a waiting step; a token without the scope sees nothing it must not.

Screenshots go to the test's tmp dir, and also to $AGENTMESH_CONSOLE_SCREENSHOTS when set (how the README's
images in services/gateway/console/docs/ are made). Every wait is on a DOM condition; none is a sleep.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh.v1 import task_pb2
from tests.integration.console_mesh import HOSTILE_DESCRIPTION, ConsoleMesh, Hostile, console_mesh

__all__ = ["console_mesh"]

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.parametrize("migrated_database_url", ["sqlite"], indirect=True),
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (make system-deps)",
    ),
    pytest.mark.timeout(120),
]
WAIT = 20.0  # seconds any one DOM condition may take on a loaded machine


class Browser:
    """A headless chromium; every method is blocking (call it through asyncio.to_thread)."""

    def __init__(self, base: str, shots: list[Path]) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for arg in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1400,1000",
            "--disable-extensions",
            "--no-first-run",
        ):
            options.add_argument(arg)
        options.accept_insecure_certs = True  # the console serves the mesh CA's certificate
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        self.driver.set_page_load_timeout(WAIT)
        self.base = base
        self.shots = shots

    def until(self, condition: Callable[[Any], Any], what: str) -> Any:
        """Poll ``condition`` until truthy; an element re-rendered by a live update meanwhile is looked up again."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(
            self.driver, WAIT, poll_frequency=0.1,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException, IndexError),
        )
        return wait.until(condition, message=f"waiting for {what}")

    def text(self, selector: str) -> str:
        """The text of the first element matching ``selector``, read when it is there and not being replaced."""
        return str(self.until(lambda d: self.css(selector)[0].text or " ", selector))

    def css(self, selector: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, selector))

    def wait_css(self, selector: str) -> Any:
        return self.until(lambda d: (self.css(selector) or [None])[0], selector)

    def click(self, selector: str) -> None:
        """Click the first element matching ``selector`` once it is there (looked up again if re-rendered)."""
        self.until(lambda d: self.css(selector)[0].click() or True, selector)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def sign_in(self, token: str, then: str = "/", *, accepted: bool = True) -> None:
        """Sign in through the login page; with ``accepted`` wait until the console has left it."""
        self.open("/login?next=" + then)
        box = self.wait_css("#token")
        box.clear()
        box.send_keys(token)
        self.wait_css("#sign-in").click()
        if accepted:
            self.until(lambda d: "/login" not in d.current_url, "leaving the login page")

    def screenshot(self, name: str) -> None:
        for folder in self.shots:
            folder.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(folder / name))

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture
def browser_factory(tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    shots = [tmp_path / "screenshots"]
    if os.environ.get("AGENTMESH_CONSOLE_SCREENSHOTS"):
        shots.append(Path(os.environ["AGENTMESH_CONSOLE_SCREENSHOTS"]))
    opened: list[Browser] = []

    def make(base: str) -> Browser:
        opened.append(Browser(base, shots))
        return opened[-1]

    yield make
    for browser in opened:
        browser.close()
    print(f"console screenshots: {shots[0]}")


async def test_marketplace_search_live_agents_and_task_explanation(
    console_mesh: ConsoleMesh, browser_factory: Callable[[str], Browser], tmp_path: Path
) -> None:
    mesh = console_mesh
    run = asyncio.to_thread
    starting = asyncio.create_task(run(browser_factory, mesh.url))  # chromium starts while the tasks run
    finished = await mesh.submit("console_chain", "hello console")
    waiting = await mesh.submit("console_guarded", "needs a look")
    parent = await mesh.submit("console_parent", "fan out")
    done = await mesh.wait(finished)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED, done.error
    await mesh.wait(waiting, (task_pb2.TASK_STATE_WAITING_APPROVAL,))
    b = await starting
    # No token yet: every page sends the operator to sign in.
    await run(b.open, "/")
    await run(b.until, lambda d: "/login" in d.current_url, "the login page")

    operator = mesh.gateway.token(["agents:read", "tasks:read", "approve"], subject="operator")
    await run(b.sign_in, operator, "/")
    await run(b.wait_css, 'article.agent[data-agent="testing/worker"]')
    await run(b.until, lambda d: "live" in b.css("#live")[0].text, "the watch to be live")
    text = await run(b.text, 'article.agent[data-agent="testing/worker"]')
    assert "platform-team" in text and "1.0.0" in text and "SERVING" in text and "shout" in text

    # A routing change arrives live: the version's weight appears in the card.
    await mesh.set_weights("testing", "worker", {"1.0.0": 100})
    await run(
        b.until,
        lambda d: "100" in b.css('article.agent[data-agent="testing/worker"] table.versions td')[1].text,
        "the routing weight",
    )

    # Discovery with its reasons.
    await run(lambda: b.css("#q-pattern")[0].send_keys("testing/.*"))
    await run(lambda: b.css("#q-intent")[0].send_keys("shout the text back"))
    await run(lambda: b.css("#search-button")[0].click())
    candidate = await run(b.wait_css, '#results li.candidate[data-agent="testing/worker"]')
    assert await run(lambda: [r.text for r in candidate.find_elements("css selector", "li.reason")])

    # A new agent appears without a reload; its hostile card is text, and inline script cannot run.
    await run(b.driver.execute_script, "window.__sameDocument = true;")
    await mesh.add_agent(Hostile(mesh.settings))
    await run(b.wait_css, 'article.agent[data-agent="testing/hostile"]')
    assert await run(b.driver.execute_script, "return window.__sameDocument === true;")  # no reload happened
    description = await run(b.text, 'article.agent[data-agent="testing/hostile"] .description')
    assert description == HOSTILE_DESCRIPTION
    assert not await run(b.css, "#agents script") and not await run(b.css, "#agents img")
    assert await run(b.driver.execute_script, "return window.__pwned === undefined;")
    inline_ran = await run(
        b.driver.execute_script,
        "const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
        "document.body.append(s); return window.__inline === 1;",
    )
    assert inline_ran is False  # the page's CSP forbids inline script
    await run(b.screenshot, "marketplace.png")

    # The task list links to a finished task's explanation: DAG with its steps, details, timeline.
    await run(lambda: b.css('nav a[href="/tasks"]')[0].click())
    link = await run(b.wait_css, f'tr[data-task="{finished}"] a.task-link')
    await run(link.click)
    await run(b.wait_css, '#dag g.node[data-step="last"]')
    nodes = await run(
        lambda: {n.get_attribute("data-step"): n.get_attribute("class") for n in b.css("#dag g.node")}
    )
    assert set(nodes) == {"first", "left", "right", "last"}
    assert all("state-succeeded" in cls for cls in nodes.values())
    assert len(await run(b.css, "#dag path.edge")) == 4
    assert await run(lambda: b.css("#task-state")[0].text) == "SUCCEEDED"
    steps = await run(lambda: b.css("#steps details.step"))
    assert len(steps) == 4
    await run(lambda: b.css('#dag g.node[data-step="left"]')[0].click())
    left = await run(b.wait_css, "#step-left[open]")
    left_text = await run(lambda: left.text)
    assert "testing/worker@1.0.0" in left_text and "steps.first.output.text" in left_text
    assert len(await run(b.css, "#timeline rect.bar")) >= 4  # one bar per attempt (a retry adds one)
    await run(b.driver.execute_script, "window.scrollTo(0, 0);")
    await run(b.screenshot, "task-dag.png")

    # A step awaiting approval: the operator (approve scope) approves it from the page.
    await run(b.open, f"/task?id={waiting}")
    await run(b.click, '#pending-approvals tr[data-step="gated"] button.approve')
    done = await mesh.wait(waiting)
    assert done.state == task_pb2.TASK_STATE_SUCCEEDED

    # A task that started sub-tasks shows their tree, each linking to its own explanation.
    assert (await mesh.wait(parent)).state == task_pb2.TASK_STATE_SUCCEEDED
    await run(b.open, f"/task?id={parent}")
    await run(b.until, lambda d: len(b.css("#subtasks ul.tree > li > a")) == 2, "two sub-tasks")

    # A token without agents:read and approve: no agent is shown, no approve button.
    reader = mesh.gateway.token(["tasks:read"], subject="reader")
    await run(b.sign_in, reader, "/")
    await run(b.wait_css, "#agents .notice.denied")
    assert not await run(b.css, "article.agent")
    assert not await run(b.css, 'nav a[href="/"]')
    third = await mesh.submit("console_guarded", "another look")
    await mesh.wait(third, (task_pb2.TASK_STATE_WAITING_APPROVAL,))
    await run(b.open, f"/task?id={third}")
    assert "needs the approve scope" in await run(b.text, '#pending-approvals tr[data-step="gated"]')
    assert not await run(b.css, "button.approve")
    # A token the gateway refuses (401) is dropped and the operator is asked to sign in again.
    # (A refused token can be back on the login page before a poll sees it leave, so wait for the notice only.)
    await run(lambda: b.sign_in("not.a.token", "/tasks", accepted=False))
    await run(b.until, lambda d: "refused=1" in d.current_url and b.css("#refused")[0].is_displayed(), "refused")
    assert await run(b.driver.execute_script, "return sessionStorage.length;") == 0
    logs = await run(b.driver.get_log, "browser")
    assert not [entry for entry in logs if "Uncaught" in entry.get("message", "")], logs  # no script error
