"""tools/cell_stats.py counts only exported code cells, without blank lines and directives."""
import json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _nb(path: Path, sources: list[tuple[str, str]]):
    cells = [{"cell_type": t, "metadata": {}, "source": s, **({"outputs": [], "execution_count": None} if t == "code" else {})}
             for t, s in sources]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


def test_cell_stats_counts_exported_cells(tmp_path):
    _nb(tmp_path / "01_a.ipynb", [
        ("code", "#| export\nx = 1\n\ny = 2\n"),                      # 2 lines
        ("code", "#| exports\n" + "a = 1\n" * 61),                     # 61 lines: over 60
        ("code", "x + y\n" * 100),                                     # not exported: not counted
        ("markdown", "#| export\nnot code\n"),
    ])
    _nb(tmp_path / "_scratch.ipynb", [("code", "#| export\n" + "b = 2\n" * 99)])  # scratch notebook: left out
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "cell_stats.py"), "--nbs", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "cells exported=2 exported_median=31.5 over_60=1 over_40=1"
