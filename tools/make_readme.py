"""Write README.md from nbs/index.ipynb, without Quarto (`nbdev-readme` needs it).

    python tools/make_readme.py            # rewrite README.md
    python tools/make_readme.py --check    # exit 1 when README.md is not what index.ipynb gives

Markdown cells go in as they are, except that a link to a notebook (`[data](11_data.ipynb)`, which the docs
site turns into its page) points at the notebook in nbs/, so that it works on GitHub and in a clone; code cells in ```python fences, their text outputs (stdout, or the plain-text
form of a result) in plain fences after them. Cells marked `#| hide`, `#| include: false` or `#| echo: false`,
directive lines (`#| ...`), stderr, and pictures are left out: a README shows text. `tests/test_readme.py` checks
that the committed README.md is what this script makes.
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
DIRECTIVE = re.compile(r"^\s*#\|\s*(.*?)\s*$")
NB_LINK = re.compile(r"\]\((?![a-zA-Z][a-zA-Z0-9+.-]*:|/|#)([^)\s]+\.ipynb(?:#[^)\s]*)?)\)")  # a relative link to a notebook
BANNER = "<!-- WARNING: generated from nbs/index.ipynb by tools/make_readme.py; edit the notebook, then run it -->"


def text(
    v: str | list[str],  # A notebook string, which may be stored as a list of lines
) -> str:  # The string
    "Join a notebook string."
    return "".join(v) if isinstance(v, list) else v


def directives(
    src: str,  # The source of a code cell
) -> tuple[set[str], str]:  # Its `#|` directives (spaces removed, such as `hide`, `echo:false`), and the code without them
    "Split a code cell into its nbdev/Quarto directives and its code."
    lines, found = src.split("\n"), set()
    while lines and (m := DIRECTIVE.match(lines[0])):
        found.add(m.group(1).replace(" ", "").lower())
        lines.pop(0)
    return found, "\n".join(lines).strip("\n")


def fence(
    body: str,  # What goes inside
    lang: str = "",  # The fence's language
) -> str:  # A fenced block that the body cannot close
    "Fence a block of code or output."
    ticks = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", body)), default=0))
    return f"{ticks}{lang}\n{body}\n{ticks}"


def output_text(
    out: dict,  # One output of a code cell
) -> str | None:  # Its text for the README, or None when it has none to show (stderr, pictures, widgets)
    "Read the text of one output: a stdout stream, or the plain-text form of a result."
    kind = out.get("output_type")
    if kind == "stream":
        return ANSI.sub("", text(out.get("text", ""))) if out.get("name") == "stdout" else None
    if kind == "error":
        return ANSI.sub("", "\n".join(out.get("traceback") or []))
    data = out.get("data") or {}
    if "text/markdown" in data:
        return None  # Markdown output (such as `show_doc`) goes in unfenced, below
    if any(k.startswith("image/") for k in data):
        return None
    return ANSI.sub("", text(data["text/plain"])) if "text/plain" in data else None


def cell_markdown(
    cell: dict,  # One notebook cell
) -> list[str]:  # Its blocks of Markdown for the README (none for a hidden cell)
    "Render one cell for the README."
    src = text(cell.get("source", ""))
    if cell.get("cell_type") == "markdown":
        return [NB_LINK.sub(r"](nbs/\1)", src.strip("\n"))] if src.strip() else []
    if cell.get("cell_type") != "code":
        return []
    opts, code = directives(src)
    if opts & {"hide", "include:false"}:
        return []
    blocks = [] if "echo:false" in opts or not code.strip() else [fence(code, "python")]
    if "output:false" in opts:
        return blocks
    streams = ""  # consecutive stdout chunks are one printout
    for out in cell.get("outputs", []):
        md = (out.get("data") or {}).get("text/markdown")
        t = output_text(out)
        if out.get("output_type") == "stream" and t is not None:
            streams += t
            continue
        if streams.strip():
            blocks.append(fence(streams.rstrip()))
        streams = ""
        if md is not None:
            blocks.append(text(md).strip("\n"))
        elif t is not None and t.strip():
            blocks.append(fence(t.rstrip()))
    if streams.strip():
        blocks.append(fence(streams.rstrip()))
    return blocks


def readme(
    nb_path: Path = ROOT / "nbs" / "index.ipynb",  # The landing notebook
) -> str:  # The README's text
    "Render the landing notebook as the README."
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    blocks = [BANNER]
    for cell in nb.get("cells", []):
        blocks += cell_markdown(cell)
    return "\n\n".join(blocks).rstrip() + "\n"


def main() -> int:  # The exit code
    "Write README.md, or check it with --check."
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nb", type=Path, default=ROOT / "nbs" / "index.ipynb", help="the landing notebook")
    p.add_argument("--out", type=Path, default=ROOT / "README.md", help="the README to write or check")
    p.add_argument("--check", action="store_true", help="only check that the README is up to date")
    a = p.parse_args()
    if not a.nb.exists():
        print(f"make_readme: {a.nb} not found", file=sys.stderr)
        return 1
    new = readme(a.nb)
    if a.check:
        ok = a.out.exists() and a.out.read_text(encoding="utf-8") == new
        print(f"make_readme: {a.out} is {'up to date' if ok else 'NOT what ' + str(a.nb) + ' gives: run python tools/make_readme.py'}")
        return 0 if ok else 1
    a.out.write_text(new, encoding="utf-8")
    print(f"make_readme: wrote {a.out} from {a.nb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
