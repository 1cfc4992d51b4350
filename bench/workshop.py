"""Time the workshop: execute each exercise notebook with its solutions pasted in, in a fresh kernel (as a learner's
"Restart kernel and run all"), and report the wall time of each, with the machine's load average around it.

    python bench/workshop.py [--blank] [--repeat N]

Prints a markdown table and ends with one line: `workshop total_s=<x> max_s=<x> load_before=<x> load_after=<x>`.
The times include starting the kernel and importing torch/transformers (5-10 s of each notebook on a 2-core CPU).
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from compass_nbdev.core import write_record
from compass_nbdev.workshop import exercise_names, solve_notebook

ROOT = Path(__file__).resolve().parents[1]


def run(nb: dict, cwd: Path) -> float:
    "Execute a notebook in a fresh python3 kernel; its wall time in seconds."
    node = nbformat.reads(json.dumps(nb), as_version=4)
    t = time.perf_counter()
    NotebookClient(node, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blank", action="store_true", help="time the blank notebooks instead of the solved ones")
    ap.add_argument("--repeat", type=int, default=1, help="runs per notebook (the minimum is reported)")
    a = ap.parse_args()
    nbs = sorted(p for p in (ROOT / "nbs" / "workshop").glob("[0-9]*.ipynb") if exercise_names(json.loads(p.read_text())))
    load0 = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, {os.cpu_count()} CPUs, "
          f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}\n")
    print("| notebook | exercises | wall s |\n|---|---:|---:|")
    rows = []
    for p in nbs:
        nb = json.loads(p.read_text()) if a.blank else solve_notebook(p)
        s = min(run(nb, p.parent) for _ in range(a.repeat))
        rows.append(s)
        print(f"| {p.name} | {len(exercise_names(json.loads(p.read_text())))} | {s:.1f} |", flush=True)
    load1 = os.getloadavg()
    print(f"\nload average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    rec = write_record('workshop', dict(total_s=f'{sum(rows):.1f}', max_s=f'{max(rows):.1f}', load_before=f'{load0[0]:.2f}',
                                        load_after=f'{load1[0]:.2f}'), details=dict(seconds={p.name: round(s, 1) for p, s in zip(nbs, rows)}),
                       blank=a.blank)
    print(rec['line'])


if __name__ == "__main__":
    main()
