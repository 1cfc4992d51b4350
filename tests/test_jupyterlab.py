"""A real client: JupyterLab on 127.0.0.1 runs the first workshop notebook, driven through its UI in headless Chromium.

The server is token-less and bound to 127.0.0.1 (with `--allow-root` when the tests run as root), serves a
temporary copy of the notebook (so the repository's notebook is never rewritten), and has its own config, runtime
and workspace folders. The test opens the notebook, runs every cell from the Run menu, waits until the kernel is
idle and every code cell has an execution count, saves it (Ctrl+S), and then checks the saved notebook and the
page: no error output, and each exercise's check printed its ✗ (the blank notebook is expected to fail its checks,
without raising). Chromium is the system's (/usr/bin/chromium), as in tests/test_docs_site.py.
"""

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "nbs" / "workshop" / "01_data.ipynb"
CHROMIUM = os.environ.get("COMPASS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("COMPASS_ARTIFACTS") or ROOT / "artifacts")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab serving a temporary folder with a copy of the notebook; stopped (kernels first) afterwards."
    missing = [m for m in ("jupyterlab", "playwright") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium")
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    tracker = tmp / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))  # all cells in the page
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                break
            try:
                _get(f"{base}/api/status")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not answer within 120 s:\n{(tmp / 'lab.log').read_text()[-3000:]}")
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with status {proc.returncode}:\n{(tmp / 'lab.log').read_text()[-3000:]}")
        yield base, root, tmp / "lab.log"
    finally:
        try:  # shut the kernels down through the API (they run in their own sessions), then the server
            for k in _get(f"{base}/api/kernels"):
                req = urllib.request.Request(f"{base}/api/kernels/{k['id']}", method="DELETE")
                urllib.request.urlopen(req, timeout=10).close()
        except OSError:
            pass
        proc.send_signal(signal.SIGINT)  # Jupyter's clean shutdown (a second SIGINT confirms it)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def _wait(page, js: str, arg, timeout: int, what: str) -> None:
    "Wait for a condition in the page; on timeout, keep a screenshot and say what the page showed."
    try:
        page.wait_for_function(js, arg=arg, timeout=timeout)
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "jupyterlab_timeout.png"))
        prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        pytest.fail(f"timed out waiting for {what}; prompts: {prompts}; screenshot: artifacts/jupyterlab_timeout.png")


def test_run_all_cells_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    base, root, logfile = lab
    nb_file = root / NOTEBOOK.name
    n_code = sum(c["cell_type"] == "code" for c in json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            script_errors = []
            page.on("pageerror", lambda e: script_errors.append(str(e)))
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            # a kernel chooser may still ask (the notebook names python3): accept its choice
            try:
                page.locator(".jp-Dialog .jp-mod-accept").click(timeout=15_000)
            except Exception:
                pass
            # the kernel must be up before we run: the execution indicator says idle
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            # wait until every code cell has run: no prompt left at [ ] or [*], and the kernel idle again
            _wait(page, """n => { const ps = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
                          return ps.length === n && ps.every(p => /\\[\\d+\\]/.test(p.textContent)); }""",
                n_code, 300_000, "every code cell to run")
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            text = page.locator(".jp-Notebook").inner_text()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab_workshop.png"))
            shown_errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
            page.locator(".jp-Notebook").first.click()
            page.keyboard.press("Control+s")
            for _ in range(60):  # the saved file has every cell's execution count
                saved = json.loads(nb_file.read_text(encoding="utf-8"))
                if all(c.get("execution_count") for c in saved["cells"] if c["cell_type"] == "code"):
                    break
                time.sleep(0.5)
        finally:
            browser.close()
    code = [c for c in saved["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "the saved notebook has cells that did not run"
    errors = [f"{o.get('ename')}: {o.get('evalue')}" for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert not [t for t in shown_errors if "Traceback" in t or "Error" in t], shown_errors
    assert not script_errors, script_errors
    assert "✗ mix_probs" in text and "✗ repetition" in text, text[-2000:]
    assert "not written yet" in text
