"""The rating widget in a real browser: JupyterLab and headless Chromium (Debian's
``chromium`` and ``chromium-driver``) driven by selenium. Rate, skip, reopen, and read
the ratings file back. Skipped where the browser or its driver is absent."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from nhr.evaluate import calibration as cal
from nhr.evaluate import rating
from tests.conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = [
    pytest.mark.notebook,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
    ),
]
TOKEN = "nhr-browser-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on tmp_path with the repository's settings overrides."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_CONFIG_DIR": str(tmp_path / ".cfg")}
    env["JUPYTERLAB_SETTINGS_DIR"] = str(tmp_path / ".settings")
    env["JUPYTERLAB_WORKSPACES_DIR"] = str(tmp_path / ".workspaces")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={tmp_path}", f"--LabApp.app_settings_dir={ROOT / 'jupyter'}",
         "--LabApp.expose_app_in_browser=True", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("JupyterLab did not start")
            time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1600"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(what, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = what()
        except Exception:  # the page is still building what we look for
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {getattr(what, '__name__', what)}")


def _run_all(driver, url: str) -> None:
    """Open the notebook in a fresh page and run all its cells."""
    driver.get(f"{url}/lab/tree/rate.ipynb?token={TOKEN}&reset")
    _wait(lambda: driver.execute_script(
        "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
        "return w && w.sessionContext && w.sessionContext.session"
        " && w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle';"
    ), 60)  # fmt: skip
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")


def _status(driver) -> str:
    return driver.find_element("css selector", ".nhr-rate-status").text


def _click(driver, widget: str, label: str) -> None:
    """Click a button of the widget: one of a toggle group's, or the button itself."""
    found = driver.find_element("css selector", f".nhr-rate-{widget}")
    buttons = found.find_elements("tag name", "button") or [found]
    next(b for b in buttons if b.text.strip() == label).click()


def _offset(driver) -> tuple[int, int]:
    """Where the save button sits relative to the source image's box."""
    find = driver.find_element
    save, box = find("css selector", ".nhr-rate-save"), find("css selector", ".nhr-rate-source")
    return save.location["x"] - box.location["x"], save.location["y"] - box.location["y"]


def test_rate_skip_reopen_in_jupyterlab(tiny_chain, lab, browser, tmp_path):
    ratings_file = tmp_path / "rating" / "ratings.csv"
    book = nbformat.read(ROOT / "notebooks" / "11_rate.ipynb", as_version=4)
    params = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    params.source += (
        f"\nRUN_DIR = {str(ratings_file.parent)!r}\nEVAL_RUN_DIR = {str(tiny_chain.store.root)!r}"
        "\nRATE_ITEMS = 4\nRATE_RATER = 'ann'\n"
    )
    nbformat.write(book, tmp_path / "rate.ipynb")

    _run_all(browser, lab)
    _wait(lambda: "0 rated" in _status(browser), 60)
    items = rating.read_items(rating.items_path(ratings_file))
    save_at = _offset(browser)
    _click(browser, "adherence", "4")
    _click(browser, "aesthetic", "2")
    _click(browser, "save", "save and next")
    _wait(lambda: "1 rated" in _status(browser))
    assert _offset(browser) == save_at  # the buttons stay where they were
    _click(browser, "skip", "skip")
    _wait(lambda: "1 skipped" in _status(browser))
    assert [
        (r.item_id, r.rater, r.adherence, r.aesthetic) for r in cal.read_ratings(ratings_file)
    ] == [(items[0].item_id, "ann", 4.0, 2.0)]
    skips = [json.loads(x) for x in rating.skips_path(ratings_file).read_text().splitlines()]
    assert skips == [{"item_id": items[1].item_id, "rater": "ann"}]
    # the cells after the widget ran without writing anything (ratings came after them)
    assert not (ratings_file.parent / "tuning").exists()
    browser.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
    saved = _wait(lambda: nbformat.read(tmp_path / "rate.ipynb", 4).metadata.get("widgets"))
    assert saved["application/vnd.jupyter.widget-state+json"]["state"]  # reopened bars render

    _run_all(browser, lab)  # reopened: a new page, the cells run again, the files resume
    _wait(lambda: "1 rated, 1 skipped, 2 left" in _status(browser), 60)
    _click(browser, "adherence", "5")
    _click(browser, "aesthetic", "5")
    _click(browser, "save", "save and next")
    _wait(lambda: "2 rated" in _status(browser))
    assert [(r.item_id, r.adherence, r.aesthetic) for r in cal.read_ratings(ratings_file)] == [
        (items[0].item_id, 4.0, 2.0),
        (items[2].item_id, 5.0, 5.0),
    ]
    assert Path(ratings_file).stat().st_mode == rating.items_path(ratings_file).stat().st_mode
