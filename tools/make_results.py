"""Write bench/RESULTS.md from the benchmark records (bench/results/<name>.json, written by `core.write_record`).

    python tools/make_results.py            # rewrite bench/RESULTS.md
    python tools/make_results.py --check    # exit 1 when bench/RESULTS.md is not what the records give

One current table first (each benchmark's latest final line, its target and verdict, when, where and at what load),
then the benchmarks that have no record yet, then links. The chronological notes live in bench/LOG.md, by hand.
A target is declared once, here, as a test on the record's fields; `tests/test_figures.py` runs `--check`.
"""
import argparse, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT/'bench'
BANNER = ("<!-- WARNING: generated from bench/results/*.json by tools/make_results.py; re-run a benchmark (or edit "
          "bench/LOG.md), then run the script -->")

# name: (the target in words, a test on the fields); None: reported, no target
TARGETS = {
    'compass_run': ('< 10 min at laptop scale', lambda f: f['wall_s'] < 600),
    'compass_run_synthetic': ('< 10 min at laptop scale', lambda f: f['wall_s'] < 600),
    'data_pipeline': ('< 180 s, < 4 GB', lambda f: f['seconds'] < 180 and f['peak_mb'] < 4096),
    'data_pipeline_split': None,  # the 1-worker run's serial/parallel CPU split and the 2-worker bounds it gives (issue 22)
    'tokenizer': ('SEA ≥ 1.40×, en and zh ≥ 1.00× the best peer (pt ≥ 1.00× Tekken)',
                  lambda f: f['sea_ratio'] >= 1.40 and f['en_zh_ratio'] >= 1.00 and f.get('pt_ratio', 1.0) >= 1.00),
    'model_cpu': ('≤ 1.0× the fastest transformers peer (issue 17)', lambda f: f['ratio'] <= 1.0),
    'model_cpu_sizes': ('≤ 1.0× the fastest peer at every size (issue 17)', lambda f: f['worst'] <= 1.0),
    'cpu_ab': None,  # a change against the base named in the line (issue 17: the step stays within +3% of the base)
    'moe_vs_dense': ('MoE ≥ 3% lower bits per byte', lambda f: f['gain_pct'] >= 3),
    'reasoning': ('both modes ≥ 95% compliant', lambda f: f['deep_think_pct'] >= 95 and f['fast_no_think_pct'] >= 95),
    'workshop': ('each notebook < 60 s', lambda f: f['max_s'] < 60),
    'train_cpu': None,
    'train_gpu': ('MFU ≥ 35% on an H100', lambda f: (f['mfu_pct'] or 0) >= 35),
    'moe_kernels': ('fwd+bwd ≥ 80% of dense, ≥ 1.2× grouped_mm, ≥ 5× eager',
                    lambda f: f['pct_of_dense'] >= 80 and f['vs_grouped_mm'] >= 1.2 and f['vs_eager'] >= 5),
}
TOOLS = {'moe_kernels_sass': 'compiles the kernels for a GPU without one and prints registers and spills (no figure)'}


def records(folder:Path=BENCH/'results')->list[dict]:
    "Every record, by name."
    return [json.loads(p.read_text()) for p in sorted(folder.glob('*.json'))]


def verdict(rec:dict)->tuple[str, str]:
    "The target in words and whether the record meets it."
    t = TARGETS.get(rec['name'])
    if t is None: return '(report)', '—'
    try: ok = t[1](rec['fields'])
    except (KeyError, TypeError): return t[0], '?'
    v = '**met**' if ok else '**not met**'
    q = rec.get('details', {}).get('quiet_reference')
    if q and not ok:   # a loaded rerun: say also how the last quiet-machine run fared
        try: v += f"; {'met' if t[1]({**rec['fields'], **q}) else 'not met'} on a quiet machine (`{q['line']}`)"
        except (KeyError, TypeError): pass
    return t[0], v


def load(rec:dict)->str:
    "The load average as recorded (1, 5, 15 min), or the note a converted record carries; flagged when over 2 per core."
    if not rec.get('load_avg'): return rec.get('load_note', '?')
    cores = int(rec['machine'].split()[0]) if rec['machine'].split()[0].isdigit() else 2
    flag = ' ⚠ loaded: times are upper bounds' if rec['load_avg'][0] > 2 * cores else ''
    return ' / '.join(f'{x:.1f}' for x in rec['load_avg']) + flag


def script(name:str)->str:
    "The benchmark script that writes a record of this name."
    if name.startswith('run_curve_'): return 'run_curve'   # one record per preset
    return {'compass_run_synthetic': 'compass_run', 'data_pipeline_split': 'data_pipeline'}.get(name, name)


def render(recs:list[dict])->str:
    "bench/RESULTS.md."
    out = [BANNER, '# Benchmark results', '',
           'The latest record of every benchmark in `bench/`, one line each. Each benchmark prints its final line and '
           'writes it, with the commit, date, machine and load average, to `bench/results/<name>.json` '
           '(`compass_nbdev.core.write_record`). The dev machine is shared (2 CPU cores), so a time is only as good as '
           'the load beside it; comparisons are made inside one run. Records converted from the old hand-written notes '
           'say so under *source*. How the figures came about, session by session: [LOG.md](LOG.md).', '',
           '| benchmark | final line | target | verdict | date (UTC) | commit | load | source |',
           '|---|---|---|---|---|---|---|---|']
    for r in recs:
        tgt, v = verdict(r)
        out.append(f"| [`{script(r['name'])}.py`]({script(r['name'])}.py) | `{r['line']}` | {tgt} | {v} | {r['date']} | "
                   f"{r.get('commit') or '?'} | {load(r)} | {r.get('source', 'measured')} |")
    have = {script(r['name']) for r in recs}
    missing = sorted(p.stem for p in BENCH.glob('*.py') if p.stem not in have and p.stem not in TOOLS)
    if missing:
        out += ['', '## No record yet', '']
        out += [f"- [`{n}.py`]({n}.py): {TARGETS[n][0] if TARGETS.get(n) else 'report'}; not measured"
                + (' (needs a GPU)' if n in ('moe_kernels', 'train_gpu') else '') for n in missing]
    out += ['', '## Links', '', '- Records: ' + ', '.join(f"[`{r['name']}`](results/{r['name']}.json)" for r in recs),
            *[f'- [`{n}.py`]({n}.py): {d}' for n, d in TOOLS.items()],
            '- `bash bench/gpu_session.sh`: both GPU benchmarks in one device call; copy `$OUT/records/*.json` here.',
            '- [LOG.md](LOG.md): the chronological notes (what was tried, kept and dropped).', '']
    return '\n'.join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help='exit 1 when bench/RESULTS.md is stale')
    a = ap.parse_args()
    text, path = render(records()), BENCH/'RESULTS.md'
    if a.check:
        if path.read_text() != text: sys.exit('bench/RESULTS.md is stale: run `python tools/make_results.py`')
        return
    path.write_text(text)
    print(f'wrote {path.relative_to(ROOT)} from {len(records())} records')


if __name__ == '__main__': main()
