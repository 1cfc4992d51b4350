"""How issue #4's CPU ratio depends on the model's size: `bench/model_cpu.py` at several sizes, one table.

Each size runs `bench/model_cpu.py` in a fresh process (same flags otherwise, `--keep-freed-memory` on by default), and
the table gives, per size, our median step time against the fastest Qwen3-MoE variant (no shared experts) and the
fastest Qwen2-MoE variant (one shared expert). `batched_mm` is left out by default: it gathers every token's expert
weights and was 30-40x slower than `grouped_mm` at every size measured, so it is never the fastest.

    python bench/model_cpu_sizes.py                       # the five sizes below, about 4 minutes on 2 cores
    python bench/model_cpu_sizes.py --sizes default,laptop --impls eager,grouped_mm,batched_mm

Ends with one line: `model_cpu_sizes worst=<largest ratio> best=<smallest ratio> met=<sizes with both ratios <= 0.8>/<sizes>`.
"""
import argparse, os, re, subprocess, sys, tempfile
from pathlib import Path

SIZES = {   # name: model_cpu.py flags; 'default' is model_cpu.py's own defaults, the size #4's final line is quoted at
    'laptop': '--hidden 128 --experts 16 --expert 128',                 # the laptop preset's widths (its head_dim is 32)
    'default': '',                                                       # hidden 256, 32 experts x 128, top-4
    'fine': '--experts 64 --expert 64',                                  # twice the experts, half as wide
    'wide': '--hidden 512 --heads 8 --expert 256',                       # twice the hidden size and expert width
    'batch4': '--batch 4',                                               # 4 x 256 tokens
}
LINE = re.compile(r"^\[median\] ours / fastest Qwen3-MoE \((\S+)\): ([\d.]+)x; ours \(1 shared\) / fastest Qwen2-MoE \((\S+)\): ([\d.]+)x")
STEP = re.compile(r"^(compass \(no shared\)|compass \(1 shared\)|qwen[23]_moe\[\w+\])\s.*step median\s+([\d.]+) ms.*page faults\s+(\d+)/step")

def run(flags:list[str], timeout:int)->tuple[dict, tuple]:
    "Run model_cpu.py; step medians (ms) and page faults per model, and (qwen3 peer, ratio, qwen2 peer, ratio)."
    with tempfile.TemporaryDirectory() as tmp:   # each size's own record is not model_cpu's: keep it out of bench/results
        r = subprocess.run([sys.executable, str(Path(__file__).with_name('model_cpu.py')), *flags], capture_output=True,
                           text=True, timeout=timeout, env={**os.environ, 'COMPASS_RESULTS_DIR': tmp})
    if r.returncode: raise SystemExit(f"model_cpu.py {' '.join(flags)} failed:\n{r.stderr[-3000:]}")
    steps, ratio = {}, None
    for line in r.stdout.splitlines():
        if m := STEP.match(line): steps[m[1]] = (float(m[2]), int(m[3]))
        if m := LINE.match(line): ratio = (m[1], float(m[2]), m[3], float(m[4]))
    if ratio is None: raise SystemExit(f"no [median] line in model_cpu.py's output:\n{r.stdout[-3000:]}")
    return steps, ratio

def main():
    p = argparse.ArgumentParser()
    p.add_argument('--sizes', default=','.join(SIZES), help=f"comma-separated names from {list(SIZES)}")
    p.add_argument('--impls', default='eager,grouped_mm', help="passed to model_cpu.py")
    p.add_argument('--steps', type=int, default=9, help="timed steps per model, passed to model_cpu.py")
    p.add_argument('--no-keep-freed-memory', action='store_true', help="glibc's defaults (ratios then swing with page faults)")
    p.add_argument('--extra', default='', help="more model_cpu.py flags for every size (e.g. tiny sizes in the tests)")
    p.add_argument('--timeout', type=int, default=900, help="seconds per size")
    a = p.parse_args()
    names = [n for n in a.sizes.split(',') if n]
    if bad := [n for n in names if n not in SIZES]: raise SystemExit(f"--sizes: unknown {bad}; allowed: {list(SIZES)}")
    print("| size | model_cpu.py flags | ours / Qwen3-MoE, no shared | ratio | ours / Qwen2-MoE, 1 shared | ratio | "
          "page faults per step (ours / theirs) |\n|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for n in names:
        flags = SIZES[n].split() + a.extra.split() + ['--impls', a.impls, '--steps', str(a.steps)]
        if not a.no_keep_freed_memory: flags.append('--keep-freed-memory')
        steps, (p3, r3, p2, r2) = run(flags, a.timeout)
        ours0, ours1, q3, q2 = steps['compass (no shared)'], steps['compass (1 shared)'], steps[p3], steps[p2]
        rows.append((n, r3, r2))
        print(f"| {n} | `{SIZES[n] or '(defaults)'}` | {ours0[0]:.1f} / {q3[0]:.1f} ms ({p3}) | **{r3:.3f}** | "
              f"{ours1[0]:.1f} / {q2[0]:.1f} ms ({p2}) | **{r2:.3f}** | {ours0[1]}, {ours1[1]} / {q3[1]}, {q2[1]} |", flush=True)
    worst, best = max(max(r[1:]) for r in rows), min(min(r[1:]) for r in rows)
    met = sum(max(r[1:]) <= 0.8 for r in rows)
    from compass_nbdev.core import write_record
    rec = write_record('model_cpu_sizes', dict(worst=f'{worst:.3f}', best=f'{best:.3f}', met=f'{met}/{len(rows)}'),
                       details={r[0]: list(r[1:]) for r in rows})
    print(rec['line'])

if __name__ == '__main__':
    main()
