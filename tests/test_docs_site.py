"""The docs site: build it offline, serve it on 127.0.0.1, and read every page in headless Chromium.

Checks: every page loads with no console error, no script error and no failed request of its own; no page asks
for anything off the local server (the site works offline); no image is broken; each notebook's page shows its
stored outputs, and its plots when it has some; the navigation lists every notebook; the search box finds an
exported function and leads to its entry. A screenshot of the landing page goes to $COMPASS_ARTIFACTS (default:
artifacts/) as docs_landing.png.

Chromium is the system's (/usr/bin/chromium, `apt-get install chromium`); Playwright never downloads a browser.
"""

import functools
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from build_docs import notebooks, page_of  # noqa: E402

CHROMIUM = os.environ.get("COMPASS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(os.environ.get("COMPASS_ARTIFACTS") or ROOT / "artifacts")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    "Build the site with the one docs command into a temporary folder: the folder, and why the build failed (or '')."
    out = tmp_path_factory.mktemp("site") / "docs"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "build_docs.py"), "--no-export-check", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)  # the export check is test_export.py's
    return out, "" if r.returncode == 0 else f"tools/build_docs.py failed:\n{(r.stdout + r.stderr)[-6000:]}"


REPORTED = []  # whether a failed build has been reported in full already


@pytest.fixture
def site(built) -> Path:
    "The built site; a failed build fails the first test with its message, and the others in one line."
    out, failed = built
    if failed:
        msg = failed if not REPORTED else "tools/build_docs.py failed: see the first error of this file"
        REPORTED.append(True)
        pytest.fail(msg, pytrace=False)
    return out


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    "Serve files without logging each request."

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(built):
    "Serve the site on a free port of 127.0.0.1 in a thread; stop it afterwards."
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(built[0])))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    t.join(5)


@pytest.fixture(scope="module")
def browser():
    "Start the system Chromium headless through Playwright."
    if not Path(CHROMIUM).exists():
        msg = f"{CHROMIUM} not found: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageLog:
    "What went wrong while one page loaded: console errors, script errors, failed or off-site requests."

    def __init__(self, page, base: str):
        self.base, self.errors, self.offsite = base, [], []
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text} ({m.location.get('url', '')})"))
        page.on("pageerror", lambda e: self.errors.append(f"script error: {e}"))
        page.on("requestfailed", lambda r: r.url.startswith(base) and self.errors.append(f"request failed: {r.url} ({r.failure})"))
        page.on("response", lambda r: r.url.startswith(base) and r.status >= 400 and self.errors.append(f"HTTP {r.status}: {r.url}"))

    def route(self, route) -> None:
        "Let requests to the local server through; refuse and note every other one."
        if route.request.url.startswith(self.base) or route.request.url.startswith("data:"):
            route.continue_()
        else:
            self.offsite.append(route.request.url)
            route.abort()


def site_pages(site: Path) -> list[str]:
    "Every HTML page of the site, relative to its root."
    return sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if "site_libs" not in p.parts)


def broken_images(page) -> list[str]:
    "The images of the page that did not load."
    return page.evaluate("() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80))")


def shown_outputs(nb: Path) -> tuple[int, bool]:
    "How many stored outputs a notebook shows in the docs (cells not hidden), and whether one is a picture."
    n, pic = 0, False
    for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
        src = "".join(c.get("source", ""))
        if c["cell_type"] != "code" or re.search(r"^#\|\s*(hide|include:\s*false|output:\s*false)", src, re.M):
            continue
        outs = [o for o in c.get("outputs", []) if o.get("output_type") != "stream" or o.get("name") == "stdout"]
        n += len(outs)
        pic = pic or any(k.startswith("image/") for o in outs for k in (o.get("data") or {}))
    return n, pic


def test_every_page_loads_cleanly(site, server, browser):
    pages = site_pages(site)
    assert "index.html" in pages, "no landing page: nbs/index.ipynb is missing"
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    problems, loaded_images, outputs = [], {}, {}
    for rel in pages:
        page = ctx.new_page()
        log = PageLog(page, server)
        page.route("**/*", log.route)
        resp = page.goto(server + rel, wait_until="load")
        page.wait_for_timeout(150)  # let deferred scripts run (search, maths, sidebar)
        if resp is None or resp.status != 200:
            problems.append(f"{rel}: HTTP {resp.status if resp else 'no response'}")
        problems += [f"{rel}: {e}" for e in log.errors]
        problems += [f"{rel}: asks for {u} (the site must work offline)" for u in log.offsite]
        problems += [f"{rel}: broken image {src}" for src in broken_images(page)]
        loaded_images[rel] = page.evaluate("() => [...document.images].filter(i => i.naturalWidth > 0).length")
        outputs[rel] = page.locator(".cell-output").count()
        page.close()
    ctx.close()
    for nb in notebooks():
        n, pic = shown_outputs(nb)
        rel = page_of(nb)
        if n and outputs.get(rel, 0) == 0:
            problems.append(f"{rel}: {nb.relative_to(ROOT)} has {n} stored outputs, but its page shows none")
        if pic and loaded_images.get(rel, 0) == 0:
            problems.append(f"{rel}: {nb.relative_to(ROOT)} has a plot in its outputs, but its page shows no image")
    assert not problems, "\n".join(problems)


def test_navigation_lists_every_notebook_and_screenshot(site, server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server + "index.html", wait_until="load")
    links = page.eval_on_selector_all("#quarto-sidebar a.sidebar-link[href]", "els => els.map(a => [a.href, a.textContent.trim()])")
    listed = {urlparse(h).path.lstrip("/"): text for h, text in links}
    expected = {page_of(nb): nb for nb in notebooks()}
    missing = [f"{p} ({nb.relative_to(ROOT)})" for p, nb in expected.items() if p not in listed]
    assert not missing, f"the sidebar does not list: {missing}; it lists {sorted(listed)}"
    assert all(listed[p] for p in expected), f"a sidebar entry has no title: {listed}"
    # the sidebar links work: each notebook's page opens with its title
    for p in expected:
        r = page.request.get(server + p)
        assert r.ok, f"{p}: HTTP {r.status}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "docs_landing.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000, "the landing page screenshot is (nearly) blank"
    page.close()


def exported_function() -> tuple[str, str]:
    "Pick a function that a notebook exports, with the page that documents it: `atomic_write` when core has it."
    from compass_nbdev._modidx import d

    syms = {k: v[0] for mod in d["syms"].values() for k, v in mod.items()}
    name = "compass_nbdev.core.atomic_write" if "compass_nbdev.core.atomic_write" in syms else sorted(syms)[0]
    return name.rpartition(".")[2], syms[name].split("#")[0]


def test_search_finds_an_exported_function(site, server, browser):
    name, doc_page = exported_function()
    assert (site / doc_page).exists(), f"{doc_page}: the page that documents {name} was not built"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server + "index.html", wait_until="load")
    box = page.locator(".smalldocs-search input").first
    box.click()
    box.fill(name)
    results = page.locator(".smalldocs-search-results .search-result")
    results.first.wait_for(timeout=10_000)
    hrefs = [urlparse(h).path.lstrip("/") for h in results.evaluate_all("els => els.map(a => a.href)")]
    assert doc_page in hrefs, f"searching for {name!r} did not find {doc_page}; it found {hrefs}"
    # following the hit opens the page and shows the function's entry
    results.nth(hrefs.index(doc_page)).click()
    page.wait_for_load_state("load")
    assert urlparse(page.url).path.lstrip("/") == doc_page
    assert page.locator(f"#{name.lower()}").count() == 1, f"{doc_page} has no entry #{name.lower()} for {name}"
    page.close()
