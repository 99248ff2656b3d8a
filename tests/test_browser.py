"""The plan explorer in a real front end: JupyterLab in headless Chromium, driven by selenium.

Run All must show the diagram at once, and a change of a control must redraw it. Skipped where
Chromium, chromedriver or selenium is missing (Debian: ``apt-get install chromium chromium-driver``).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000")
TOKEN = "minilocal-browser-test"
WAIT_S = 60  # the longest any single step may take on a slow, shared CPU
MIN_INK = 0.02  # the diagram colours ~5-10% of its pixels; a blank one none

# The picture an <img> shows: its decoded size, its size on screen and its share of dark, opaque
# pixels (a blank figure is white or transparent).
PICTURE_JS = """
const img = arguments[0];
if (!img.src || !img.complete || !img.naturalWidth) return null;
const c = document.createElement("canvas");
c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext("2d"); g.drawImage(img, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
let ink = 0;
for (let i = 0; i < d.length; i += 4)
  if (d[i + 3] > 128 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) ink++;
return {src: img.src, width: img.naturalWidth, height: img.naturalHeight,
        shown_width: img.clientWidth, ink: ink / (c.width * c.height)};
"""


def _chromedriver():
    """The chromedriver executable, or skip the test with what to install."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found; install it with: apt-get install chromium chromium-driver")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not os.access(driver, os.X_OK):
        pytest.skip("chromedriver not found; install it with: apt-get install chromium-driver")
    pytest.importorskip("selenium", reason="selenium is missing; install it with: pip install -e '.[dev]'")
    return driver


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what, check, timeout=WAIT_S, every=0.25):
    """check()'s first truthy value, polled until ``timeout`` seconds; fail naming ``what``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def write_notebook(path, cells):
    """A notebook of code cells (source strings) for the venv's python3 kernel."""
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                     "source": src} for src in cells],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


@contextmanager
def jupyter_lab(root, work):
    """A JupyterLab server on a free port serving ``root``; yields its base URL and always stops it."""
    port, log = _free_port(), open(work / "jupyter.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(work / "config"),
               JUPYTER_RUNTIME_DIR=str(work / "runtime"), JUPYTERLAB_WORKSPACES_DIR=str(work / "ws"))
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--port={port}", "--port-retries=0",
           f"--ServerApp.token={TOKEN}", f"--notebook-dir={root}",
           "--LabApp.expose_app_in_browser=True"]  # window.jupyterapp: run commands by name
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}: "
                            f"{(work / 'jupyter.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2):
                    return True
            except OSError:
                return False
        _wait("jupyter lab to answer", up)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server shuts its kernels down, then exits
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


@contextmanager
def chromium(work):
    """Headless Chromium with a new, empty profile; always quits."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + (f"--user-data-dir={work / 'profile'}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(_chromedriver()))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


# True once the notebook on screen has its cells and its kernel is connected and idle.
READY_JS = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return Boolean(kernel && kernel.connectionStatus === "connected" && kernel.status === "idle"
               && w.content && w.content.widgets && w.content.widgets.length);
"""
# "done" once every code cell of the notebook on screen has run and the kernel is idle again, the
# first error if a cell failed (Run All stops there), else null.
DONE_JS = """
const w = window.jupyterapp.shell.currentWidget;
const code = w.content.widgets.filter(c => c.model.type === "code");
for (const c of code) for (const o of c.model.outputs.toJSON())
  if (o.output_type === "error") return "error: " + o.ename + ": " + o.evalue;
return w.sessionContext.session.kernel.status === "idle" && code.every(c => c.model.executionCount)
       ? "done" : null;
"""


def run_all(driver):
    """Run the notebook's "Run All Cells" command (what Run > Run All Cells does) once its kernel is idle."""
    _wait("the notebook and its kernel", lambda: driver.execute_script(READY_JS))
    driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")


def wait_until_run(driver, timeout=WAIT_S):
    """Wait for Run All to finish; fail with the error if a cell raised one."""
    result = _wait("the cells to finish", lambda: driver.execute_script(DONE_JS), timeout=timeout)
    if result != "done":
        pytest.fail(f"a cell failed: {result}")


def pictures(driver):
    """What every <img> of a widget box in the outputs shows (see PICTURE_JS); [] while JupyterLab
    is replacing them."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        imgs = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-vbox img")
        return [shown for shown in (driver.execute_script(PICTURE_JS, img) for img in imgs) if shown]
    except StaleElementReferenceException:
        return []


def picture(driver, old_src=None, timeout=WAIT_S):
    """The explorer's picture once one that differs from ``old_src`` shows ink; fails with the
    last picture seen if it stays blank (a blank diagram is the bug this test catches)."""
    seen = []

    def drawn():
        new = [p for p in pictures(driver) if p["src"] != old_src]
        seen[:] = new[-1:] or seen
        return next((p for p in new if p["ink"] > MIN_INK), None)
    try:
        return _wait("the explorer's diagram", drawn, timeout=timeout)
    except pytest.fail.Exception:
        last = dict(seen[0], src=seen[0]["src"][:40]) if seen else "none"
        pytest.fail(f"the explorer's diagram stayed blank or missing for {timeout} s; last seen: {last}")


def explorer_session(root, work, notebook="explorer.ipynb"):
    """Open ``notebook`` in JupyterLab, Run All, then pick 'greedy': the picture after each."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    with jupyter_lab(root, work) as url, chromium(work) as driver:
        driver.get(f"{url}/lab/tree/{notebook}?token={TOKEN}")
        run_all(driver)
        wait_until_run(driver)
        first = picture(driver, timeout=10)  # "right after Run All": no second chance later
        method = driver.find_element(By.CSS_SELECTOR, ".widget-dropdown select")
        Select(method).select_by_visible_text("greedy")
        return first, picture(driver, old_src=first["src"])


def test_explorer_draws_right_after_run_all_and_redraws_on_a_change():
    _chromedriver()
    with tempfile.TemporaryDirectory(prefix="minilocal-browser-") as tmp:
        root, work = Path(tmp, "nb"), Path(tmp, "work")
        root.mkdir()
        work.mkdir()
        write_notebook(root / "explorer.ipynb", [
            "from minilocal.viz.widgets import plan_explorer\nexplorer = plan_explorer(n_blocks=6)\nexplorer"])
        first, after = explorer_session(root, work)
    # overlapping(6): 9 x 3.9 inches at 100 dpi; greedy(6) has one bracket row: 9 x 3.55 inches
    assert (first["width"], first["height"]) == (900, 390), first
    assert first["shown_width"] == first["width"], "the PNG is shown stretched; set_png sets its width"
    assert (after["width"], after["height"]) == (900, 355), after
