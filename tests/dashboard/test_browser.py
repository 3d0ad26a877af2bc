"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

A running 2-node cluster with an actor and a failed task: the page opened
from the dashboard link shows both nodes, the actor, and the failed task
with its traceback, and a screenshot is saved.  ``scripts/test.sh``
installs Chromium (as root) and Playwright (the ``test`` extra).
"""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import wait_for

import skate

pytest.importorskip("aiohttp")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Debian's chromium is not installed at {CHROMIUM} "
                       "(scripts/test.sh installs it when run as root: apt-get install chromium)"),
]

#: Flags for a headless Chromium on a machine without network access or a GPU.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@skate.remote
class Inventory:
    def count(self) -> int:
        return 7


@skate.remote
def parse_order(text: str) -> int:
    return int(text)  # "not a number" raises ValueError


@pytest.fixture
def two_nodes():
    from skate.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": True, "dashboard_port": 0})
    try:
        c.add_node(num_cpus=1)
        skate.init(address=c.address)
        yield c
    finally:
        c.shutdown()


def test_dashboard_in_chromium_shows_the_actor_and_the_failed_task(two_nodes, tmp_path):
    inventory = Inventory.remote()
    assert skate.get(inventory.count.remote()) == 7
    with pytest.raises(ValueError):
        skate.get(parse_order.remote("not a number"))

    shot = tmp_path / "dashboard.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(two_nodes.dashboard_url)
            assert "token=" not in page.url  # traded for the HttpOnly cookie
            assert not any(c["name"] == "skate_dashboard" and not c["httpOnly"] for c in browser.cookies())
            assert page.evaluate("document.cookie") == ""  # invisible to scripts

            page.click("button[data-view=nodes]")
            rows = page.locator("#view-nodes tbody tr")
            wait_for(lambda: rows.count() == 2 and "ALIVE" in page.inner_text("#view-nodes"), 60, interval=0.2)
            assert "(head)" in page.inner_text("#view-nodes")

            page.click("button[data-view=actors]")
            page.wait_for_selector("#view-actors td:has-text('Inventory')")
            assert "ALIVE" in page.inner_text("#view-actors")

            page.click("button[data-view=tasks]")
            tb = page.wait_for_selector("#view-tasks pre.tb:has-text('parse_order')")
            text = tb.inner_text()
            assert "Traceback (most recent call last)" in text and "ValueError" in text
            assert "invalid literal for int()" in text
            assert "FAILED" in page.inner_text("#view-tasks")
            page.screenshot(path=str(shot), full_page=True)
            page.click("button[data-view=nodes]")
            page.wait_for_selector("#view-nodes .bar")
            page.screenshot(path=str(tmp_path / "dashboard-nodes.png"), full_page=True)

            # The same page without the credential: refused.
            other = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                fresh = other.new_page()
                resp = fresh.goto(two_nodes.dashboard_url.split("?")[0])
                assert resp.status == 401
            finally:
                other.close()
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("SKATE_DASHBOARD_SCREENSHOTS")
    if keep:  # a folder (e.g. docs/) to refresh the README's screenshots by hand
        for name in ("dashboard.png", "dashboard-nodes.png"):
            shutil.copy(tmp_path / name, os.path.join(keep, name))
