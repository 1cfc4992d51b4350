"""Benchmark the data stage (load + clean + dedup + report) on a whole data directory: the lesson's `data.run` beside
the datatrove pipeline (`pipeline.run`, local executor) with 1 and 2 workers, in the same invocation.

Usage: python bench/data_pipeline.py DATA_DIR [--workers 2] [--threshold 0.8] [--num-perm 128] [--profile] [--split]
(--profile: CPU seconds of normalize / quality rules / langid / MinHash on a sample; cProfile's per-call overhead
would inflate langid's pure-Python loops, so parts are timed whole)
Each run is a fresh subprocess (so each has its own peak memory). Prints a per-run breakdown on stderr, then exactly
one summary line, for the pipeline at `--workers`:
data_pipeline seconds= peak_mb= kept_bytes= removed_bytes= mb_per_s_per_core= ... (ratios to the lesson's run)
and writes the record bench/results/data_pipeline.json (every run, the kept-id comparison, the load average).
--split instead runs the pipeline once with one worker and writes bench/results/data_pipeline_split.json: CPU seconds
per stage, split into the serial part (one-task stages, the glue between them, the classifier's fit) and the part
that runs per shard, and the 2-worker speed-up bounds they give. CPU seconds barely depend on the machine's load,
so this can run on a busy machine; the wall-clock speed-up needs the full, quiet run.
"""
import argparse, hashlib, json, os, resource, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

class PeakRSS:
    """Samples the summed PSS of this process and its workers every 0.5 s (psutil; else ru_maxrss).

    PSS (proportional set size) splits pages shared by the forked workers between them, so the sum is the
    memory the tree really uses; summed RSS would count the parent's copy-on-write pages once per worker."""
    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        try: import psutil; self._p = psutil.Process()
        except ImportError: self._p = None
        self._t = threading.Thread(target=self._run, daemon=True); self._t.start()
    def _sample(self):
        procs = [self._p] + self._p.children(recursive=True)
        tot = 0
        for q in procs:
            try:
                m = q.memory_full_info(); tot += getattr(m, 'pss', m.rss)
            except Exception: pass
        self.peak = max(self.peak, tot)
    def _run(self):
        while self._p is not None and not self._stop.wait(0.5): self._sample()
    def stop(self)->float:
        "Peak in MB: the sampled tree total, and never less than the main process's own peak RSS."
        self._stop.set(); self._t.join()
        return max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20

def one(impl:str, workers:int, data_dir:str, threshold:float, num_perm:int)->dict:
    "Run one implementation in this process; the measured fields and the kept ids' digest."
    import matplotlib; matplotlib.use('Agg')
    from compass_nbdev import data, pipeline
    cfg = data.DataConfig(num_proc=workers, near_dup_threshold=threshold, num_perm=num_perm)
    out = Path(tempfile.mkdtemp(prefix=f'data_bench_{impl}_'))
    mem = PeakRSS()
    t0, c0 = time.perf_counter(), os.times()
    s = (data.run if impl == 'lesson' else pipeline.run)(cfg, out, data_dir)
    total, c1 = time.perf_counter() - t0, os.times()
    peak = mem.stop()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    lines = [l for p in sorted((out/'data'/'clean').glob('*.jsonl.gz')) for l in data.gzip.open(p, 'rt')]
    ids = [json.loads(l)['id'] for l in lines]
    st = s.get('stage_times') or {k: [v, s['cpu_seconds'].get(k)] for k, v in s['seconds'].items()}  # the pipeline's: whole stages
    r = {'impl': impl, 'workers': workers, 'seconds': round(total, 2), 'cpu_seconds': round(cpu, 1), 'peak_mb': round(peak),
         'bytes_in': s['bytes_in'], 'kept_docs': s['kept_docs'], 'kept_bytes': s['kept_bytes'], 'removed_bytes': s['removed_bytes'],
         'removed_by_reason': s['removed_by_reason'], 'mb_per_s_per_core': round(s['bytes_in'] / 1e6 / total / workers, 3),
         'stage_seconds': {k: round(v[0], 2) for k, v in st.items()}, 'stage_cpu_seconds': {k: None if v[1] is None else round(v[1], 2) for k, v in st.items()},
         'step_seconds': s.get('step_seconds'), 'fit_cpu_seconds': _fit_cpu(out),
         'kept_ids_sha1': hashlib.sha1('\n'.join(ids).encode()).hexdigest(), 'kept_rows_sha1': hashlib.sha1(''.join(lines).encode()).hexdigest(),
         'loadavg_after': [round(x, 2) for x in os.getloadavg()]}
    shutil.rmtree(out, ignore_errors=True)
    return r

def _fit_cpu(out:Path)->float|None:
    "CPU seconds of the pipeline's quality task 0 (the classifier's fit), from its datatrove stats; None for the lesson."
    p = out/'data'/'work'/'logs'/'quality'/'stats'/'00000.json'
    if not p.is_file(): return None
    v = next(s for s in json.loads(p.read_text()) if s['name'].endswith('quality features + fit'))['stats']['cpu_seconds']
    return round(v['total'] if isinstance(v, dict) else v, 2)

def split(r:dict)->dict:
    """Serial and per-shard CPU seconds of a 1-worker pipeline run, and the 2-worker bounds: Amdahl's (the fit counted
    serial) and the critical path's (the fit beside the featurization of the shards, as the quality stage runs it)."""
    c, fit = r['stage_cpu_seconds'], r['fit_cpu_seconds']
    glue = r['cpu_seconds'] - sum(c.values())  # before, between and after the stages
    serial = c['dedup'] + c['score'] + c['report'] + glue
    par = c['clean'] + (c['quality'] - fit) + c['write']
    s = (serial + fit) / r['cpu_seconds']
    path = serial + c['clean'] / 2 + max(fit, c['quality'] / 2) + c['write'] / 2
    return {'cpu_seconds': r['cpu_seconds'], 'serial_cpu': round(serial, 1), 'fit_cpu': fit, 'parallel_cpu': round(par, 1),
            'parallel_pct': round(100 * par / r['cpu_seconds'], 1), 'amdahl_2': round(1 / (s + (1 - s) / 2), 2),
            'critical_path_2': round(r['cpu_seconds'] / path, 2)}

def profile_clean(data_dir:str, per_source:int=300)->dict:
    "CPU seconds of each part of the clean step (normalize, quality rules, langid) on a seeded sample, one process."
    from compass_nbdev import data
    from compass_nbdev.core import LANGS
    cfg = data.DataConfig(max_docs_per_source=per_source)
    ds = data.load_corpus(data_dir, max_docs_per_source=per_source)
    texts, langs = list(ds['text']), list(ds['lang'])
    data.detect_lang('warm up the langid model, loaded once per process', 'en')
    t = {}; c = time.process_time()
    norm = [data.normalize_text(x, cfg.unicode_form) for x in texts]; t['normalize'] = time.process_time() - c; c = time.process_time()
    sig = [data.quality_signals(x, LANGS[l].spaced, cfg.rules(l).rep_ngram) for x, l in zip(norm, langs)]; t['quality_signals'] = time.process_time() - c
    c = time.process_time()
    for x, l in zip(norm, langs): data.detect_lang(x, l, cfg.langid_min_prob, cfg.langid_min_chars, cfg.script_min_share)
    t['langid'] = time.process_time() - c
    c = time.process_time(); data.minhash_signatures(norm, [LANGS[l].spaced for l in langs], cfg.num_perm, cfg.ngram); t['minhash'] = time.process_time() - c
    return {'docs': len(texts), 'mb': round(sum(len(x.encode()) for x in texts) / 1e6, 2), 'cpu_seconds': {k: round(v, 2) for k, v in t.items()}}

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('data_dir'); ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--threshold', type=float, default=0.8); ap.add_argument('--num-perm', type=int, default=128)
    ap.add_argument('--profile', action='store_true', help='also time the parts of the clean step on a sample (kept in the record)')
    ap.add_argument('--split', action='store_true', help='only the 1-worker pipeline run: its serial/parallel CPU split (record data_pipeline_split)')
    ap.add_argument('--one', nargs=2, metavar=('IMPL', 'WORKERS'), help=argparse.SUPPRESS)  # a child run
    a = ap.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one[0], int(a.one[1]), a.data_dir, a.threshold, a.num_perm))); return
    runs, W = {}, a.workers
    for impl, w in ((('pipeline', 1),) if a.split else (('lesson', W), ('pipeline', W), ('pipeline', 1))):
        cmd = [sys.executable, __file__, a.data_dir, '--one', impl, str(w), '--threshold', str(a.threshold), '--num-perm', str(a.num_perm)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode: sys.exit(f"{impl} x{w} failed:\n{out.stderr[-3000:]}")
        r = runs[f'{impl}_w{w}'] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{impl:9} workers={w} seconds={r['seconds']} cpu={r['cpu_seconds']} peak_mb={r['peak_mb']} "
              f"MB/s/core={r['mb_per_s_per_core']} load={r['loadavg_after']}", file=sys.stderr)
    from compass_nbdev.core import write_record
    if a.split:
        rec = write_record('data_pipeline_split', split(runs['pipeline_w1']), details={'runs': runs})
        print(rec['line']); return
    ref, p, p1 = runs[f'lesson_w{W}'], runs[f'pipeline_w{W}'], runs['pipeline_w1']
    same = ref['kept_ids_sha1'] == p['kept_ids_sha1'] == p1['kept_ids_sha1'] and ref['removed_by_reason'] == p['removed_by_reason']
    same_rows = ref['kept_rows_sha1'] == p['kept_rows_sha1'] == p1['kept_rows_sha1']  # texts and quality scores too
    fields = {'seconds': p['seconds'], 'peak_mb': p['peak_mb'], 'kept_bytes': p['kept_bytes'], 'removed_bytes': p['removed_bytes'],
              'mb_per_s_per_core': p['mb_per_s_per_core'], 'workers': W,
              'per_core_vs_lesson': round(p['mb_per_s_per_core'] / ref['mb_per_s_per_core'], 2),
              'speedup_vs_1_worker': round(p1['seconds'] / p['seconds'], 2), 'same_kept_ids': same, 'same_kept_rows': same_rows}
    extra = {'profile_clean': profile_clean(a.data_dir)} if a.profile else {}
    if extra: print(f"clean step, CPU seconds by part: {extra['profile_clean']}", file=sys.stderr)
    rec = write_record('data_pipeline', {k: f'{v:g}' if isinstance(v, float) else v for k, v in fields.items()},
                       details={'runs': runs, 'split_w1': split(p1), **extra})
    print(rec['line'])

if __name__ == '__main__': main()
