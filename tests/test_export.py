"The library is exactly what the notebooks export (the same check as `tools/test.sh` runs first)."

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from export_check import export_problems, lib_name  # noqa: E402


def test_library_is_what_the_notebooks_export():
    problems = export_problems(ROOT)
    assert not problems, (
        "The library is not what the notebooks export:\n  " + "\n  ".join(problems)
        + "\nEdit the notebooks (never the .py files), then run `nbdev-export` and commit both."
    )


def copy_repo(
    dst: Path,  # An empty folder
) -> Path:  # The lib folder of the copy
    "Copy what the export check reads: pyproject.toml, nbs/ and the package."
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")
    shutil.copytree(ROOT / "nbs", dst / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    lib = lib_name(ROOT)
    shutil.copytree(ROOT / lib, dst / lib, ignore=shutil.ignore_patterns("__pycache__"))
    return dst / lib


def test_check_catches_hand_edits_and_stray_modules(tmp_path):
    lib = copy_repo(tmp_path)
    assert export_problems(tmp_path) == []  # the copy starts out in sync
    core = lib / "core.py"
    core.write_text(core.read_text() + "\nHAND_EDIT = 1\n")
    (lib / "stray.py").write_text("x = 1\n")
    (lib / "_modidx.py").unlink()
    problems = "\n".join(export_problems(tmp_path))
    assert "core.py: differs" in problems
    assert "stray.py: no notebook exports it" in problems
    assert "_modidx.py: exported by the notebooks but missing" in problems


def test_check_names_an_unreadable_notebook(tmp_path):
    copy_repo(tmp_path)
    (tmp_path / "nbs" / "99_half_saved.ipynb").write_text('{"cells": [')
    problems = export_problems(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("nbs/99_half_saved.ipynb: not a readable notebook"), problems
