"""JupyterLab as a researcher uses it: a real headless Chromium runs a notebook in it.

The test starts JupyterLab from this environment on a free loopback port with a token (as
``make lab`` does), opens ``01-data.ipynb`` of a small project, runs all cells from the Run
menu on the kernel "Python (maas)", saves, and checks in the page and in the saved file that
no cell errored, that every figure rendered as an image and that the progress lines are plain
output, not the red box of stderr. A screenshot of the figure is kept
in ``reports/jupyterlab/``. Without Chromium and its driver (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them) the test skips and says so.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import PROJECT_KERNEL, ROOT, write_project
from notebook_checks import FIGURE_CALL

pytestmark = pytest.mark.slow

NOTEBOOK = "01-data.ipynb"
SCREENSHOT = ROOT / "reports" / "jupyterlab" / "01-data.png"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
# Every cell in the page (JupyterLab 4 otherwise renders only the cells in view).
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
    "windowingMode": "none"}}  # fmt: skip


class PortInUse(RuntimeError):
    """The port asked for is taken: JupyterLab would not be where the browser looks."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_lab(notebooks: Path, port: int, token: str, log_path: Path) -> subprocess.Popen:
    """JupyterLab on 127.0.0.1:``port`` serving ``notebooks``; waits until it answers."""
    import httpx

    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise PortInUse(f"port {port} on 127.0.0.1 is in use: stop what listens there, or "
                            "choose another port")  # fmt: skip
    settings = log_path.parent / "lab-settings"
    for name, values in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(values))
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
    ]  # fmt: skip
    if os.geteuid() == 0:  # CI containers run as root, which JupyterLab refuses by default
        command.append("--allow-root")
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    process = subprocess.Popen(
        command, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited ({process.returncode}):\n{log_path.read_text()}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/status?token={token}").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise TimeoutError(f"JupyterLab did not answer within 120 s:\n{log_path.read_text()}")


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # driver.get_log("browser")
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


@pytest.fixture
def lab(tmp_path, corpus_available):
    root = write_project(tmp_path / "project")
    port, token = free_port(), secrets.token_hex(16)
    process = start_lab(root / "notebooks", port, token, tmp_path / "lab.log")
    try:
        yield root, f"http://127.0.0.1:{port}", token
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_port_in_use_gets_a_clear_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is in use"):
            start_lab(tmp_path, port, "t", tmp_path / "lab.log")


def menu_click(driver, menu: str, item: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(
        By.XPATH, f"//div[contains(@class,'lm-MenuBar-itemLabel') and text()='{menu}']"
    ).click()
    driver.find_element(
        By.XPATH, f"//div[contains(@class,'lm-Menu-itemLabel') and text()='{item}']"
    ).click()


@pytest.mark.skipif(
    not (BROWSER and DRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver; .ci/run does)",
)
def test_jupyterlab_runs_a_notebook_and_renders_every_figure(lab):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, url, token = lab
    driver = chromium()
    try:
        driver.get(f"{url}/lab/tree/{NOTEBOOK}?token={token}")
        wait = WebDriverWait(driver, 180, poll_frequency=0.5)
        kernel = "//*[contains(@class,'jp-Toolbar-kernelName') and contains(., 'Python (maas)')]"
        wait.until(lambda d: d.find_elements(By.XPATH, kernel))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-CodeCell"))
        menu_click(driver, "Run", "Run All Cells")

        def prompts(d):
            return [
                e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")
            ]

        WebDriverWait(driver, 420, poll_frequency=1).until(
            lambda d: prompts(d) and all(p.strip("[]: ").isdigit() for p in prompts(d))
        )
        images = driver.find_elements(By.CSS_SELECTOR, ".jp-RenderedImage img")
        errors = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type="
                                      "'application/vnd.jupyter.error']")  # fmt: skip
        rendered = [img for img in images if driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img)]  # fmt: skip
        if rendered:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", rendered[0])
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
        menu_click(driver, "File", "Save Notebook")
        time.sleep(2)
    finally:
        driver.quit()
    assert not errors, [e.text for e in errors]
    saved = nbformat.read(root / "notebooks" / NOTEBOOK, as_version=4)
    assert saved.metadata.kernelspec.name == PROJECT_KERNEL
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    # A healthy run's progress is plain output: JupyterLab shows stderr in a red box.
    streams = [o for c in code for o in c.outputs if o.output_type == "stream"]
    assert any(o.name == "stdout" and "stage data: done" in o.text for o in streams)
    assert not [o.text for o in streams if o.name == "stderr"]
    figure_cells = [c for c in code if FIGURE_CALL in c.source]
    assert figure_cells and all(
        any("image/png" in o.get("data", {}) for o in c.outputs) for c in figure_cells
    )
    assert len(rendered) == len(figure_cells), "a figure did not render as an image"
    assert (root / "reports" / "figures" / "data_card.png").is_file()
