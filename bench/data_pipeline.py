"""Benchmark the data stage (load + clean + dedup + report) on a whole data directory.

Usage: python bench/data_pipeline.py DATA_DIR [--num-proc 2] [--out DIR] [--threshold 0.8] [--num-perm 128]
Prints a per-stage breakdown, then exactly one summary line:
data_pipeline seconds=<total> peak_mb=<peak memory: summed PSS of the process tree> kept_bytes=<n> removed_bytes=<n>
"""
import argparse, os, resource, sys, tempfile, threading, time
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

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('data_dir'); ap.add_argument('--num-proc', type=int, default=2)
    ap.add_argument('--out', default=None, help='run folder to write data/ into (default: a temporary dir)')
    ap.add_argument('--threshold', type=float, default=0.8); ap.add_argument('--num-perm', type=int, default=128)
    a = ap.parse_args(argv)
    import matplotlib; matplotlib.use('Agg')
    from compass_nbdev.data import DataConfig, run
    cfg = DataConfig(num_proc=a.num_proc, near_dup_threshold=a.threshold, num_perm=a.num_perm)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix='data_bench_'))
    mem = PeakRSS()
    t0, c0 = time.perf_counter(), os.times()
    s = run(cfg, out, a.data_dir)
    total, c1 = time.perf_counter() - t0, os.times()
    peak = mem.stop()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    print(f"cpu seconds (main + workers) {cpu:.1f}; wall {total:.1f}; load average now {os.getloadavg()}", file=sys.stderr)
    print(f"docs in {s['docs_in']:,}, kept {s['kept_docs']:,}; bytes in {s['bytes_in']:,}; output in {out/'data'}", file=sys.stderr)
    print(f"  {'stage':<26}{'wall s':>8}{'cpu s':>8}", file=sys.stderr)
    for k, v in s['seconds'].items(): print(f"  {k:<26}{v:8.2f}{s['cpu_seconds'].get(k, float('nan')):8.2f}", file=sys.stderr)
    for r, v in s['removed_by_reason'].items(): print(f"  removed {r:<18}{v['docs']:8,} docs {v['bytes']:12,} bytes", file=sys.stderr)
    from compass_nbdev.core import write_record
    rec = write_record('data_pipeline', dict(seconds=f'{total:.1f}', peak_mb=f'{peak:.0f}', kept_bytes=s['kept_bytes'],
                                             removed_bytes=s['removed_bytes']), details=dict(seconds=s['seconds']))
    print(rec['line'])

if __name__ == '__main__': main()
