"""Check that the library is exactly what the notebooks export.

    python tools/export_check.py          # exit 1, naming each file, when compass_nbdev/ differs from a fresh export

`nbdev-export` runs in a temporary copy (pyproject.toml, nbs/ and the package's `__init__.py`), so the working
tree is never touched; the modules it writes are then compared with the real ones. A module that differs, one that
the notebooks create but is missing, and one that no notebook exports (stale, or written by hand) are all
reported, as is a notebook that cannot be read. `tools/test.sh`, `tools/build_docs.py` and `tests/test_export.py`
use it.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP = "__init__.py"  # holds __version__, which nbdev reads; every other module comes from the notebooks


def lib_name(
    root: Path,  # The repository root, with pyproject.toml
) -> str:  # The package folder, as nbdev's `lib_path` (default: the project name)
    "Read the package folder from pyproject.toml, as nbdev does."
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    nb = cfg.get("tool", {}).get("nbdev", {})
    return str(nb.get("lib_path") or nb.get("lib_name") or cfg["project"]["name"])


def nbdev_bin(
    name: str,  # A console script of nbdev, such as `nbdev-export`
) -> str:  # Its path: beside this Python first, else on PATH
    "Find one of nbdev's commands in the running environment."
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extras (pip install -e '.[dev]')")
    return found


def py_files(
    folder: Path,  # A package folder
) -> dict[str, bytes]:  # Each .py file under it, by its path relative to the folder
    "Read every Python file of a package, without caches."
    files = sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def unreadable(
    root: Path = ROOT,  # The repository root
) -> list[str]:  # One line per notebook under nbs/ that is not valid notebook JSON, naming it
    "Find the notebooks that nbdev cannot read (a notebook half-written by an editor, a bad merge), by name."
    return [p for p in notebook_problems(root) if ": not a readable notebook" in p]


def notebook_problems(
    root: Path = ROOT,  # The repository root
) -> list[str]:  # One line per notebook that cannot be read, or whose export would not be reproducible
    "Read every notebook under nbs/: unreadable ones, and ones with cells that have no id (nbdev-clean adds them)."
    out = []
    for nb in sorted((root / "nbs").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb.parts:
            continue
        try:
            data = json.loads(nb.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
                raise ValueError("it has no list of cells")
        except (ValueError, UnicodeDecodeError) as e:
            out.append(f"{nb.relative_to(root)}: not a readable notebook: {e}")
            continue
        no_id = sum(1 for c in data["cells"] if isinstance(c, dict) and not c.get("id"))
        if no_id and (data.get("nbformat"), data.get("nbformat_minor", 0)) >= (4, 5):
            out.append(f"{nb.relative_to(root)}: {no_id} cell(s) without an id, so nbdev-export writes a random one each "
                       "time: run nbdev-clean on it")
    return out


def export_problems(
    root: Path = ROOT,  # The repository root
) -> list[str]:  # One line per problem; empty when the library is exactly what the notebooks export
    "Export the notebooks in a temporary copy and list every module that differs from the committed library."
    nb_problems = notebook_problems(root)
    if any(": not a readable notebook" in p for p in nb_problems):
        return nb_problems
    lib = lib_name(root)
    with tempfile.TemporaryDirectory(prefix="export-check-") as tmp:
        t = Path(tmp)
        shutil.copy2(root / "pyproject.toml", t / "pyproject.toml")
        shutil.copytree(root / "nbs", t / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_proc"))
        (t / lib).mkdir()
        shutil.copy2(root / lib / KEEP, t / lib / KEEP)
        r = subprocess.run([nbdev_bin("nbdev-export")], cwd=t, capture_output=True, text=True)
        if r.returncode:
            return [f"nbdev-export failed (exit {r.returncode}):\n{r.stdout}{r.stderr}".rstrip()]
        have, want = py_files(root / lib), py_files(t / lib)
    out = nb_problems + [f"{lib}/{f}: differs from what its notebook exports" for f in sorted(have.keys() & want.keys()) if have[f] != want[f]]
    out += [f"{lib}/{f}: exported by the notebooks but missing from the library" for f in sorted(want.keys() - have.keys())]
    out += [f"{lib}/{f}: no notebook exports it (stale, or written by hand); move its code into a notebook or delete it"
            for f in sorted(have.keys() - want.keys())]
    return out


def main() -> int:  # The exit code: 1 when the library and the notebooks disagree
    "Print the problems, with how to fix them."
    problems = export_problems()
    if not problems:
        print("export check: the library is exactly what the notebooks export")
        return 0
    print("export check FAILED:", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    print("Edit the notebooks (never the .py files), then run `nbdev-export` and commit both.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
