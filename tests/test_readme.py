"README.md is nbs/index.ipynb rendered by tools/make_readme.py, so the landing page and the README never drift apart."

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from make_readme import readme  # noqa: E402

FIX = "Regenerate it with `python tools/make_readme.py` (after editing nbs/index.ipynb, never README.md) and commit both."


def test_readme_is_index_notebook():
    nb, md = ROOT / "nbs" / "index.ipynb", ROOT / "README.md"
    assert nb.exists(), "nbs/index.ipynb is missing: it is the landing page and the source of README.md"
    assert md.exists(), f"README.md is missing. {FIX}"
    assert md.read_text(encoding="utf-8") == readme(nb), f"README.md is not what nbs/index.ipynb gives. {FIX}"


def test_readme_rendering(tmp_path):
    "Markdown verbatim (links to notebooks point into nbs/); code fenced with its text output; hidden cells, directives, stderr and pictures left out."
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Title\n", "\n", "> summary"]},
        {"cell_type": "markdown", "metadata": {}, "source": "See [data](11_data.ipynb#mixing), [web](https://x.org/a.ipynb)."},
        {"cell_type": "code", "metadata": {}, "source": "#| hide\nimport secret", "outputs": []},
        {"cell_type": "code", "metadata": {}, "source": "#| export\nx = 1\nprint(x)", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": ["1\n"]},
            {"output_type": "stream", "name": "stderr", "text": "noise\n"}]},
        {"cell_type": "code", "metadata": {}, "source": "x", "outputs": [
            {"output_type": "execute_result", "metadata": {}, "execution_count": 1, "data": {"text/plain": "1"}}]},
        {"cell_type": "code", "metadata": {}, "source": "plot()", "outputs": [
            {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}]},
        {"cell_type": "code", "metadata": {}, "source": "#| echo: false\nshow()", "outputs": [
            {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": "**shown**", "text/plain": "x"}}]},
    ]
    nb = tmp_path / "index.ipynb"
    nb.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    got = readme(nb)
    body = got.split("\n", 2)[2]  # after the banner
    assert body == "# Title\n\n> summary\n\nSee [data](nbs/11_data.ipynb#mixing), [web](https://x.org/a.ipynb).\n\n```python\nx = 1\nprint(x)\n```\n\n```\n1\n```\n\n```python\nx\n```\n\n```\n1\n```\n\n```python\nplot()\n```\n\n**shown**\n"
    assert "secret" not in got and "noise" not in got and "#|" not in got and "Figure" not in got
