"The library is exactly what the notebooks export (the same check as `tools/test.sh` runs first)."

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from export_check import export_problems, lib_name, nbdev_bin  # noqa: E402


def test_library_is_what_the_notebooks_export():
    problems = export_problems(ROOT)
    assert not problems, (
        "The library is not what the notebooks export:\n  " + "\n  ".join(problems)
        + "\nEdit the notebooks (never the .py files), then run `nbdev-export` and commit both."
    )


def copy_repo(
    dst: Path,  # An empty folder
) -> Path:  # The lib folder of the copy
    "Copy what the export check reads (pyproject.toml, nbs/, the package), cleaned and exported so it starts in sync."
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")
    shutil.copytree(ROOT / "nbs", dst / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    lib = lib_name(ROOT)
    shutil.copytree(ROOT / lib, dst / lib, ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in ("nbdev-clean", "nbdev-export"):  # whatever state the working tree is in
        subprocess.run([nbdev_bin(cmd)], cwd=dst, check=True, capture_output=True)
    return dst / lib


def test_check_catches_hand_edits_and_stray_modules(tmp_path):
    lib = copy_repo(tmp_path)
    assert export_problems(tmp_path) == []
    core = lib / "core.py"
    core.write_text(core.read_text() + "\nHAND_EDIT = 1\n")
    (lib / "stray.py").write_text("x = 1\n")
    (lib / "_modidx.py").unlink()
    problems = "\n".join(export_problems(tmp_path))
    assert "core.py: differs" in problems
    assert "stray.py: no notebook exports it" in problems
    assert "_modidx.py: exported by the notebooks but missing" in problems


def test_check_names_cells_without_ids(tmp_path):
    copy_repo(tmp_path)
    nb = tmp_path / "nbs" / "00_core.ipynb"
    data = json.loads(nb.read_text())
    del data["cells"][0]["id"]  # nbdev-export would write a random id for it
    nb.write_text(json.dumps(data))
    assert any(p.startswith("nbs/00_core.ipynb: 1 cell(s) without an id") for p in export_problems(tmp_path))


def test_check_names_an_unreadable_notebook(tmp_path):
    copy_repo(tmp_path)
    (tmp_path / "nbs" / "99_half_saved.ipynb").write_text('{"cells": [')
    problems = export_problems(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("nbs/99_half_saved.ipynb: not a readable notebook"), problems
