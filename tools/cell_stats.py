#!/usr/bin/env python
"""Print the length of exported notebook cells: `cells exported_median= over_60= over_40=` for `nbs/`.

A cell's length is its count of non-blank lines, directives (`#| ...`) left out. `--per-notebook` adds a line for
each notebook, `--list N` names every exported cell longer than N lines (longest first).

    python tools/cell_stats.py                 # the one line the reader-first issue asks for
    python tools/cell_stats.py --per-notebook --list 40
"""
import argparse, json, statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def exported_cells(nb_path:Path):
    "Yield (index, non-blank lines, first code line) for every exported code cell of one notebook."
    cells = json.loads(nb_path.read_text(encoding='utf-8'))['cells']
    for i, c in enumerate(cells):
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source']).splitlines()
        directives = [l.strip() for l in src if l.strip().startswith('#|')]
        if not any(d.split()[1:2] and d.split()[1] in ('export', 'exports') for d in directives): continue
        body = [l for l in src if l.strip() and not l.strip().startswith('#|')]
        yield i, len(body), (body[0].strip() if body else '')

def notebooks(nbs:Path):
    "Every notebook under `nbs`, scratch notebooks (`_*`) and checkpoints left out."
    return sorted(p for p in nbs.rglob('*.ipynb')
                  if not any(part.startswith(('_', '.')) for part in p.relative_to(nbs).parts))

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--nbs', default=str(ROOT/'nbs'), help='the notebooks folder')
    ap.add_argument('--per-notebook', action='store_true', help='one line per notebook too')
    ap.add_argument('--list', type=int, metavar='N', help='name every exported cell longer than N lines')
    a = ap.parse_args(argv)
    nbs = Path(a.nbs)
    allcells = []
    for nb in notebooks(nbs):
        cells = [(nb.relative_to(nbs), i, n, first) for i, n, first in exported_cells(nb)]
        allcells += cells
        if a.per_notebook and cells:
            ns = [c[2] for c in cells]
            print(f"  {str(nb.relative_to(nbs)):40} cells={len(ns):3} median={statistics.median(ns):5.1f} "
                  f"over_60={sum(n > 60 for n in ns)} over_40={sum(n > 40 for n in ns)}")
    if a.list is not None:
        for nb, i, n, first in sorted(allcells, key=lambda c: -c[2]):
            if n > a.list: print(f"  {n:4}  {nb} cell {i}: {first[:70]}")
    ns = [c[2] for c in allcells]
    med = statistics.median(ns) if ns else 0
    print(f"cells exported={len(ns)} exported_median={med:g} over_60={sum(n > 60 for n in ns)} "
          f"over_40={sum(n > 40 for n in ns)}")

if __name__ == '__main__': main()
