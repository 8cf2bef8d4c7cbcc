"""The documentation site: it builds in strict mode, its reference is the code's, and a real
headless Chromium finds no missing image, no broken internal link and no console error.

The build runs ``mkdocs build --strict`` as ``make docs`` does, into a temporary folder, so a
broken link, anchor or include fails here, in CI. The browser test serves the built site on a
free loopback port and skips without Debian's ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_jupyterlab_browser import BROWSER, DRIVER, chromium

PAGES = ["", "tutorials/first-run/"]  # the index and one tutorial, opened in the browser


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner about its future
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    built = mkdocs_build(ROOT / "mkdocs.yml", target)
    assert built.returncode == 0, built.stdout + built.stderr
    return target


def flat_keys(mapping: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in mapping.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += flat_keys(value, f"{prefix}{key}.")
    return keys


def test_the_reference_is_generated_from_the_code(site):
    from maas import cli

    commands = (site / "reference" / "cli" / "index.html").read_text()
    for name in cli.COMMANDS:
        assert f"maas {name}" in commands
    assert "--grpc-port" in commands and "--model-repository" in commands
    parameters = (site / "reference" / "parameters" / "index.html").read_text()
    for key in flat_keys(yaml.safe_load((ROOT / "params.yaml").read_text())):
        name = key.rpartition(".")[2]  # a row of its section's table, or a section's heading
        assert f"<code>{name}</code>" in parameters or f"<code>{key}</code>" in parameters, key
    http = (site / "reference" / "http" / "index.html").read_text()
    assert "/v2/models/{model}/infer" in http and "/predict" in http
    assert "ModelInfer" in (site / "reference" / "grpc" / "index.html").read_text()
    for report in (ROOT / "reports" / "benchmarks").glob("*.md"):
        assert (site / "explanation" / "benchmarks" / report.stem / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    page = docs / "tutorials" / "first-run.md"
    page.write_text(page.read_text() + "\nSee [the missing part](serving.md#no-such-section).\n")
    config = tmp_path / "mkdocs.yml"  # the project's, reading the copy
    config.write_text(yaml.safe_dump({
        "INHERIT": str(ROOT / "mkdocs.yml"), "docs_dir": str(docs),
        "hooks": [str(ROOT / "docs" / "generate.py")]}))  # fmt: skip
    broken = mkdocs_build(config, tmp_path / "site")
    assert broken.returncode != 0
    assert "no-such-section" in broken.stdout + broken.stderr


@pytest.fixture
def served(site):
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the test reports what failed, not every request
        pass


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError:
        return None


@pytest.mark.skipif(
    not (BROWSER and DRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver "
    "(apt-get install -y chromium chromium-driver; .ci/run does)",
)
def test_chromium_finds_no_missing_image_broken_link_or_console_error(served):
    driver = chromium()
    problems, links, images = [], set(), []
    try:
        for page in PAGES:
            driver.get(served + page)
            shown = driver.execute_script(
                "return [...document.images].map(i => [i.src, i.complete && i.naturalWidth > 0])"
            )
            images += shown
            problems += [f"{page}: image {src} did not load" for src, ok in shown if not ok]
            hrefs = driver.execute_script("return [...document.links].map(a => a.href)")
            links |= {href for href in hrefs if href.startswith(served)}
            problems += [
                f"{page}: console {entry['level']}: {entry['message']}"
                for entry in driver.get_log("browser")
                if entry["level"] in ("SEVERE", "WARNING")
            ]
    finally:
        driver.quit()
    assert images and len(links) > 20, "the pages should show a figure and link the whole site"
    pages: dict[str, str | None] = {}
    for link in sorted(links):
        address, _, anchor = link.partition("#")
        if address not in pages:
            pages[address] = fetch(address)
        if pages[address] is None:
            problems.append(f"broken link: {link}")
        elif anchor and f'id="{urllib.parse.unquote(anchor)}"' not in pages[address]:
            problems.append(f"broken anchor: {link}")
    assert not problems, "\n".join(problems)
