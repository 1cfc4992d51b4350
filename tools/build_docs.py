"""Build the documentation site into docs/, offline, from the notebooks and their committed outputs.

    python tools/build_docs.py            # or: bash tools/build_docs.sh
    python tools/build_docs.py --force    # reprocess every notebook, not only the changed ones

The steps, each of which stops the build with a message that names the notebook or link at fault:

1. the export check (`tools/export_check.py`): the library must be exactly what the notebooks export, and every
   notebook under nbs/ must be readable (one half-written by an editor fails here, by name);
2. nbdev's own preprocessing, as `nbdev-proc-nbs` does it (nbs/nbdev.yml, nbs/sidebar.yml, then `_proc/`), minus
   its attempt to download Quarto: it runs only import, export and `show_doc` cells, and each `show_doc` also
   gets fastcore's docments parameter table (`docs_worker.py`). Notebooks are never executed: the pages show the
   committed outputs;
3. a staged copy of `_proc/` for smalldocs: pages named as nbdev names them (`30_moe.ipynb` -> `moe.html`),
   nbdev's links to the hosted docs made local, and an "API reference" section added to the sidebar;
4. `smalldocs` renders it: pages, navigation, search, and the API reference (`smalldocs.api` in
   nbs/_quarto.yml); broken links fail the build. The site replaces docs/ (docs/README.md is kept), with KaTeX
   served from the site and no web fonts, so it works offline;
5. a check that every notebook has its page and a sidebar entry.

Quarto users can still run `nbdev-docs` (it reads the same nbs/_quarto.yml; it deletes docs/README.md, which
`git checkout docs/README.md` brings back).
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
PROC = ROOT / "_proc"
KATEX_LOCAL = Path(__file__).resolve().parent / "vendor" / "katex"  # KaTeX for maths, served by the site itself
sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_check import export_problems, unreadable  # noqa: E402

from docs_worker import ERROR_SUFFIX, NBDEV_WORKER, proc_one  # noqa: E402


class DocsError(Exception):
    "A build that cannot go on; the message says what to fix."


def notebooks(
    nbs: Path = NBS,  # The notebooks folder
) -> list[Path]:  # Every notebook that gets a page: not under a `_` or `.` name, not a checkpoint
    "List the notebooks of the site, as nbdev and smalldocs choose them, in path order."
    return sorted(p for p in nbs.rglob("*.ipynb") if not any(part.startswith(("_", ".")) for part in p.relative_to(nbs).parts))


def page_of(
    nb: Path,  # A notebook under nbs/
    nbs: Path = NBS,  # The notebooks folder
) -> str:  # Its page, relative to the site root, such as `core.html` or `workshop/intro.html`
    "Name the page a notebook becomes, as nbdev names it (`output-file`): the number prefix goes, folders stay."
    from nbdev.config import nbpath2html

    return nbpath2html(nb.relative_to(nbs)).as_posix()


def proc_nbs(
    n_workers: int,  # Processes for nbdev's preprocessing
    force: bool,  # Reprocess every notebook
) -> None:
    "Run what `nbdev-proc-nbs` runs: nbdev.yml, sidebar.yml, the module index and `_proc/`; never install Quarto."
    import nbdev.quarto
    import nbdev.serve_drv

    nbdev.quarto._ensure_quarto = lambda: None  # smalldocs renders the site; Quarto is neither needed nor downloaded
    nbdev.serve_drv.main = proc_one  # `proc_nbs` looks it up at each call
    for f in PROC.rglob(f"*{ERROR_SUFFIX}"):
        f.unlink()
    try:
        nbdev.quarto.nbdev_proc_nbs.__wrapped__(n_workers=n_workers, force=force)
    finally:
        nbdev.serve_drv.main = NBDEV_WORKER
        os.chdir(ROOT)
    failed = sorted(PROC.rglob(f"*{ERROR_SUFFIX}"))
    if failed:
        raise DocsError(
            f"nbdev could not process {len(failed)} notebook(s) for the docs:\n\n"
            + "\n\n".join(f.read_text(encoding="utf-8").replace(f"{ROOT}/", "") for f in failed)
            + "\n\nThe docs run a notebook's import, export and show_doc cells, and every cell that imports something"
            " (nbdev warns about those above): put imports in cells of their own, so no other code runs for the docs."
        )


def notebook_cells_text(
    nb: dict,  # A processed notebook
    edit: Callable[[str], str],  # What to do to each piece of Markdown
) -> None:
    "Apply `edit` to the Markdown of a notebook: its Markdown cells and the Markdown and HTML of its outputs."
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            cell["source"] = edit("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            for mime in ("text/markdown", "text/html"):
                if mime in data:
                    v = data[mime]
                    data[mime] = edit("".join(v) if isinstance(v, list) else v)


def hosted_url(
    folder: Path,  # A folder with nbdev.yml: nbs/, `_proc/` or a staged copy
) -> str:  # `website.site-url`, ending in `/`; empty when there is none
    "Read the hosted docs' address that nbdev writes into its links and docstrings."
    import yaml

    url = str((yaml.safe_load((folder / "nbdev.yml").read_text()) or {}).get("website", {}).get("site-url") or "")
    return url.rstrip("/") + "/" if url else ""


def stage(
    proc: Path,  # nbdev's processed copy of nbs/ (`_proc`), which stays as nbdev's cache
    dest: Path,  # An empty folder to render from
    nbs: list[Path],  # The notebooks
) -> dict[str, str]:  # The staged name of each notebook, by its path under nbs/ (`00_core.ipynb` -> `core.ipynb`)
    """Copy `_proc` for smalldocs: pages named as nbdev names them, nbdev's links to the hosted docs made
    local, the API reference in the sidebar, the config's paths made absolute and its Quarto-only formats dropped."""
    import yaml

    shutil.copytree(proc, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("docs", "api", "_symbols.json", f"*{ERROR_SUFFIX}"))
    site_url = hosted_url(dest)
    cfg = yaml.safe_load((dest / "nbdev.yml").read_text())
    cfg.pop("format-links", None)  # the Markdown twins of pages are Quarto's; smalldocs makes only html
    (dest / "nbdev.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    renamed, seen = {}, {}
    for nb in nbs:
        rel, page = nb.relative_to(NBS).as_posix(), page_of(nb)
        if page in seen:
            raise DocsError(f"{rel} and {seen[page]} would both become the page {page}: rename one of them")
        seen[page] = rel
        renamed[rel] = page.removesuffix(".html") + ".ipynb"
    names = {Path(a).name: Path(b).name for a, b in renamed.items()}
    link = re.compile(r"(\]\(|href=[\"'])((?:[^)\"'\s#]*/)?)([^/)\"'\s#]+\.ipynb)")

    def edit(md: str) -> str:  # a link to the hosted docs becomes a link inside the site; links to notebooks follow renames
        md = md.replace(site_url, "/") if site_url else md
        return link.sub(lambda m: m.group(1) + m.group(2) + names.get(m.group(3), m.group(3)), md)

    for rel, new in renamed.items():
        src = dest / rel
        if not src.exists():
            raise DocsError(f"nbs/{rel}: nbdev did not process it (see the messages above)")
        nb = json.loads(src.read_text(encoding="utf-8"))
        notebook_cells_text(nb, edit)
        front = nb["cells"][0] if nb.get("cells") and nb["cells"][0].get("cell_type") == "raw" else None
        if front is not None:  # the page is renamed already; smalldocs does not read `output-file`
            text = "".join(front["source"]) if isinstance(front["source"], list) else front["source"]
            front["source"] = re.sub(r"(?m)^output-file:.*\n", "", text)
        src.unlink()
        (dest / new).write_text(json.dumps(nb), encoding="utf-8")
    side = yaml.safe_load((dest / "sidebar.yml").read_text())
    contents = side["website"]["sidebar"]["contents"]

    def rename(items: list) -> list:  # the sidebar's entries, with the pages' new names
        return [rename_entry(c) for c in items]

    def rename_entry(c: object) -> object:
        if isinstance(c, str):
            return renamed.get(c, c)
        if isinstance(c, dict):
            c = dict(c)
            if isinstance(c.get("href"), str):
                c["href"] = renamed.get(c["href"], c["href"])
            if isinstance(c.get("contents"), list):
                c["contents"] = rename(c["contents"])
            if isinstance(c.get("section"), str):  # a folder, such as workshop/, titled as a section
                c["section"] = c["section"].replace("_", " ").capitalize()
        return c

    side["website"]["sidebar"]["contents"] = rename(contents) + [{"section": "API reference", "contents": "api/*.qmd"}]
    (dest / "sidebar.yml").write_text(yaml.safe_dump(side, sort_keys=False))
    q = yaml.safe_load((dest / "_quarto.yml").read_text())
    fmt = q.get("format") if isinstance(q.get("format"), dict) else {}
    fmt.pop("commonmark", None)  # Quarto's Markdown twins of the pages; smalldocs makes html only
    if isinstance(fmt.get("html"), dict):
        fmt["html"].pop("keep-md", None)
    api = (q.get("smalldocs") or {}).get("api")
    if api:
        api["root"] = str(ROOT)  # the staging folder is not beside the repository
    (dest / "_quarto.yml").write_text(yaml.safe_dump(q, sort_keys=False))
    return renamed


def render(
    site_src: Path,  # The staged pages, with _quarto.yml
) -> tuple[Path, list[str]]:  # The built site, and smalldocs' warnings
    "Render the processed notebooks with smalldocs."
    from smalldocs.config import BuildError, ConfigError
    from smalldocs.site import build

    try:
        site = build(site_src, quiet=True)
    except (BuildError, ConfigError) as e:
        raise DocsError(f"smalldocs could not build the site: {e}") from None
    return site.out, list(site.warnings)


def install(
    built: Path,  # The site that smalldocs wrote
    docs: Path,  # The docs folder of the repository
    site_url: str = "",  # The hosted site's address, ending in `/`, as nbdev.yml gives it
) -> None:
    "Replace docs/ with the built site, keeping docs/README.md; make it self-contained (KaTeX and fonts local)."
    keep = (docs / "README.md").read_bytes() if (docs / "README.md").exists() else None
    if docs.exists() and any(p.name != "README.md" for p in docs.iterdir()) and not (docs / "site_libs").is_dir():
        raise DocsError(f"{docs} is not empty and holds no built site (no site_libs/): not replacing it")
    if docs.exists():
        shutil.rmtree(docs)
    shutil.move(str(built), str(docs))
    if keep is not None:
        (docs / "README.md").write_bytes(keep)
    from smalldocs.layout import KATEX

    shutil.copytree(KATEX_LOCAL, docs / "site_libs" / "katex", ignore=shutil.ignore_patterns("README.md"))
    for page in docs.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        up = "../" * (len(page.relative_to(docs).parts) - 1)
        new = html.replace(KATEX, f"{up}site_libs/katex")  # maths: the vendored KaTeX, not the CDN
        if site_url:  # a module docstring's "Docs: <hosted page>.html.md" (nbdev writes it) becomes a link to the page here
            new = re.sub(rf"Docs: {re.escape(site_url)}(\S+?\.html)\.md", lambda m: f'Docs: <a href="{up}{m[1]}">{m[1]}</a>', new)
        if new != html:
            page.write_text(new, encoding="utf-8")
    for css in (docs / "site_libs" / "themes").glob("*.css"):  # a theme's web fonts: offline, the system fonts serve
        text = css.read_text(encoding="utf-8")
        local = re.sub(r"@import url\((?:https?:)?//[^)]*\);?", "", text)
        if local != text:
            css.write_text(local, encoding="utf-8")


def sidebar_pages(
    page_html: str,  # The HTML of one page of the site
) -> set[str]:  # The hrefs of the sidebar's links, relative to the site root when the page is at the root
    "Read the sidebar's links from a built page."
    side = page_html.split('id="quarto-sidebar"', 1)[-1].split("</nav>", 1)[0]
    return set(re.findall(r'href="([^"#]+)"', side))


def verify(
    docs: Path,  # The built site
    nbs: list[Path],  # The notebooks that must have pages
) -> list[str]:  # One line per problem
    "Check that every notebook has its page and an entry in the sidebar of the landing page."
    out = [f"{page_of(nb)}: missing (from {nb.relative_to(ROOT)})" for nb in nbs if not (docs / page_of(nb)).exists()]
    landing = docs / "index.html"
    if not landing.exists():
        out.append("index.html: missing (nbs/index.ipynb is the landing page)")
        landing = next((docs / page_of(nb) for nb in nbs if (docs / page_of(nb)).exists()), None)
    if landing is not None:
        side = sidebar_pages(landing.read_text(encoding="utf-8"))
        out += [f"{page_of(nb)}: not in the sidebar" for nb in nbs if page_of(nb) not in side]
    return out


def build_docs(
    docs: Path | None = None,  # Where the site goes; default: nbdev's `doc_path` (docs/)
    n_workers: int = 2,  # Processes for nbdev's preprocessing
    force: bool = False,  # Reprocess every notebook
    export_check: bool = True,  # Run the export check first
) -> Path:  # The site folder
    "Build the whole site, or raise `DocsError` naming what is wrong."
    t0 = time.time()
    os.chdir(ROOT)
    if export_check:
        problems = export_problems(ROOT)
        if problems:
            raise DocsError("the export check:\n  " + "\n  ".join(problems))
    nbs = notebooks()
    if not nbs:
        raise DocsError(f"no notebooks in {NBS}")
    bad = unreadable(ROOT)
    if bad:
        raise DocsError("\n".join(bad))
    print(f"build_docs: processing {len(nbs)} notebook(s) with nbdev (only import, export and show_doc cells run)", flush=True)
    proc_nbs(n_workers, force)
    print("build_docs: rendering with smalldocs", flush=True)
    with tempfile.TemporaryDirectory(prefix="compass-docs-") as tmp:
        renamed = stage(PROC, Path(tmp), nbs)
        built, warnings = render(Path(tmp))
        staged = {v: f"nbs/{k}" for k, v in renamed.items()}
        warnings = [re.sub(r"^[^:]+(?=:)", lambda m: staged.get(m.group(0), m.group(0)), w) for w in warnings]
        broken = [w for w in warnings if "broken link" in w]
        for w in warnings:
            if w not in broken:
                print(f"build_docs: warning: {w}", file=sys.stderr)
        if broken:
            raise DocsError("broken links:\n  " + "\n  ".join(broken) + "\nLink to a notebook by its file, "
                            "`[MoE](30_moe.ipynb)`, which Quarto and smalldocs both turn into its page; the page itself "
                            "is named as nbdev names it, without the number (moe.html), so `30_moe.html` is broken.")
        if docs is None:
            from nbdev.config import get_config

            docs = Path(get_config(ROOT).doc_path)
        install(built, docs, hosted_url(Path(tmp)))
    problems = verify(docs, nbs)
    if problems:
        raise DocsError("the site is incomplete:\n  " + "\n  ".join(problems))
    n = len(list(docs.rglob("*.html")))
    print(f"build_docs: wrote {n} pages ({len(nbs)} notebooks) to {docs} in {time.time() - t0:.0f}s")
    return docs


def main() -> int:  # The exit code
    "Parse the command line and build."
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--force", action="store_true", help="reprocess every notebook, not only the changed ones")
    p.add_argument("--n-workers", type=int, default=2, help="processes for nbdev's preprocessing (0: serial)")
    p.add_argument("--out", type=Path, default=None, help="where the site goes (default: docs/)")
    p.add_argument("--no-export-check", action="store_true", help="skip the export check (tools/test.sh runs it already)")
    a = p.parse_args()
    try:
        build_docs(a.out.resolve() if a.out else None, n_workers=a.n_workers, force=a.force, export_check=not a.no_export_check)
    except DocsError as e:
        print(f"build_docs FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
