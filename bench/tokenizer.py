"""Tokenizer benchmark: train each preset (time, peak memory), then compare the 180k merged tokenizer with a
single BPE of the same size on the same data and with widely used tokenizers, on the NTREX sentences.

    python bench/tokenizer.py DATA_DIR [--presets tiny,laptop,compass-v2] [--main compass-v2] [--out DIR]

Each training runs in its own process so that its peak memory (max RSS) is its own. The last line printed is
`tokenizer sea_ratio=<x> en_zh_ratio=<x> pt_ratio=<x> train_s=<x>` for the main preset (SEA: th vi id ms tl pt,
against the best multilingual peer; en and zh each against the best peer on it; pt against Tekken); the same
fields, the bytes/token table and the load go to `bench/results/tokenizer.json`."""
from __future__ import annotations
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

def _child(kind:str, preset:str, data_dir:str, out:str):
    "Run one training in this (child) process and print a JSON report line."
    from compass_nbdev.tokenizer import (TokenizerConfig, train_tokenizer, train_bpe, group_texts, eval_lines,
                                         to_hf, save_tokenizer)
    from compass_nbdev.data import load_corpus
    t = time.perf_counter()
    if kind == 'merged':  # the raw corpus of the data directory (not a run's cleaned one), as the presets were tuned
        cfg = TokenizerConfig.preset(preset)
        corpus = load_corpus(data_dir, langs=sorted({l for ls in cfg.groups.values() for l in ls}), seed=cfg.seed)
        tt = train_tokenizer(cfg, corpus, exclude=eval_lines(data_dir))
        save_tokenizer(tt.tokenizer, out, tt.report)
        rep = tt.report
        rep = {'train_s': rep['train_s'], 'vocab_size': rep['vocab_size'], 'merge': rep['merge'],
               'groups': {g: {k: v for k, v in r.items() if k != 'langs'} for g, r in rep['groups'].items()}}
    else:  # one BPE of the same size, on the same texts as all the groups together
        cfg = TokenizerConfig.preset(preset)
        size = json.loads((Path(out).parent/'merged'/'train_report.json').read_text())['vocab_size']
        corpus = load_corpus(data_dir, langs=sorted({l for ls in cfg.groups.values() for l in ls}), seed=cfg.seed)
        ex = eval_lines(data_dir)
        texts = [x for g, ls in cfg.groups.items() for x in group_texts(corpus, ls, cfg.bytes_per_lang, cfg.lang_weights, cfg.seed, ex)[0]]
        t = time.perf_counter()
        save_tokenizer(to_hf(train_bpe(texts, size, cfg.split, cfg.min_frequency)), out)
        rep = {'train_s': round(time.perf_counter() - t, 2), 'vocab_size': size}
    rep['wall_s'] = round(time.perf_counter() - t, 2)
    rep['peak_rss_mb'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print('REPORT ' + json.dumps(rep), flush=True)

def _run(kind, preset, data_dir, out)->dict:
    r = subprocess.run([sys.executable, __file__, '--child', kind, preset, data_dir, str(out)],
                       capture_output=True, text=True)
    if r.returncode: sys.exit(f"{kind} {preset} failed:\n{r.stderr[-3000:]}")
    return json.loads([l for l in r.stdout.splitlines() if l.startswith('REPORT ')][-1][7:])

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('data_dir'); ap.add_argument('--presets', default='tiny,laptop,compass-v2')
    ap.add_argument('--main', default='compass-v2'); ap.add_argument('--out', default=None)
    if sys.argv[1:2] == ['--child']: return _child(*sys.argv[2:6])
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix='bench_tokenizer_'))
    rows = {}
    for p in a.presets.split(','):
        rows[p] = _run('merged', p, a.data_dir, out/p/'merged')
        print(f"preset {p}: vocab {rows[p]['vocab_size']}, train {rows[p]['train_s']} s, peak RSS {rows[p]['peak_rss_mb']} MB", flush=True)
    if a.main not in rows: rows[a.main] = _run('merged', a.main, a.data_dir, out/a.main/'merged')
    single = _run('single', a.main, a.data_dir, out/a.main/'single')
    print(f"single BPE ({a.main} size {single['vocab_size']}): train {single['train_s']} s, peak RSS {single['peak_rss_mb']} MB", flush=True)
    from compass_nbdev.tokenizer import eval_tokenizer_stage, results_table
    ev = eval_tokenizer_stage(out/a.main/'merged', a.data_dir, out/a.main/'eval.json', others={'single': out/a.main/'single'})
    langs = ['th', 'vi', 'id', 'ms', 'tl', 'en', 'zh', 'pt', 'zh-Hant']
    print(results_table(ev['results'], [l for l in langs if l in ev['results']['merged']]))
    h = ev['headline']
    print(json.dumps({'headline': h, 'merge': rows[a.main].get('merge'), 'presets': rows, 'single': single, 'out': str(out)}, indent=1))
    from compass_nbdev.core import write_record
    nan = float('nan')
    bpt = {n: {l: round(r['bytes_per_token'], 3) for l, r in rs.items()} for n, rs in ev['results'].items()}
    rec = write_record('tokenizer', dict(sea_ratio=f"{h.get('sea_ratio', nan):.3f}", en_zh_ratio=f"{h.get('en_zh_ratio', nan):.3f}",
                                         pt_ratio=f"{h.get('pt_ratio', nan):.3f}", train_s=f"{rows[a.main]['train_s']:.1f}"),
                       details=dict(headline=h, bytes_per_token=bpt, presets=rows, single=single))
    print(rec['line'])

if __name__ == '__main__': main()
