"""The CPU benchmark scripts still run end to end (tiny sizes; the figures themselves live in bench/RESULTS.md).
Each writes its record into a temporary COMPASS_RESULTS_DIR here, never over the real ones in bench/results/."""
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.parametrize('extra', [[], ['--keep-freed-memory']])
def test_model_cpu_bench_runs_and_prints_its_final_line(extra, tmp_path):
    args = ['--vocab', '256', '--hidden', '32', '--layers', '1', '--heads', '2', '--kv-heads', '1', '--experts', '4',
            '--k', '2', '--expert', '16', '--seq', '16', '--steps', '2', '--block', '2', '--impls', 'grouped_mm']
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'model_cpu.py'), *args, *extra], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env={**os.environ, 'COMPASS_RESULTS_DIR': str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r'^model_cpu ratio=\d+\.\d{3} peak_mb=\d+$', r.stdout.strip().splitlines()[-1]), r.stdout[-2000:]
    assert "page faults" in r.stdout and "matmul floor, compass (1 shared)" in r.stdout
    if extra: assert 'freed memory kept (mallopt)' in r.stdout
    rec = json.loads((tmp_path / 'model_cpu.json').read_text())   # the record holds the printed line and its fields
    assert rec['line'] == r.stdout.strip().splitlines()[-1] and set(rec['fields']) == {'ratio', 'peak_mb'}
    assert isinstance(rec['fields']['ratio'], float) and rec['commit'] and rec['date'].endswith('UTC')

def test_model_cpu_sizes_runs_every_size_and_summarises(tmp_path):
    tiny = ('--vocab 256 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --experts 4 --k 2 --expert 16 --seq 16 '
            '--block 2')
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'model_cpu_sizes.py'), '--sizes', 'laptop,batch4',
                        '--impls', 'grouped_mm', '--steps', '2', '--extra', tiny], capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env={**os.environ, 'COMPASS_RESULTS_DIR': str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert [l.split('|')[1].strip() for l in lines if l.startswith('| laptop') or l.startswith('| batch4')] == ['laptop', 'batch4']
    assert re.search(r'^model_cpu_sizes worst=\d+\.\d{3} best=\d+\.\d{3} met=[0-2]/2$', lines[-1]), r.stdout[-2000:]
    assert json.loads((tmp_path / 'model_cpu_sizes.json').read_text())['line'] == lines[-1]
    bad = subprocess.run([sys.executable, str(ROOT / 'bench' / 'model_cpu_sizes.py'), '--sizes', 'huge'],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode != 0 and "unknown ['huge']" in bad.stderr

def _bench(name):
    import importlib.util
    p = Path(__file__).parent.parent/'bench'/f'{name}.py'
    s = importlib.util.spec_from_file_location(name, p); m = importlib.util.module_from_spec(s); s.loader.exec_module(m)
    return m

def _tokens(phases, mb): return sum(p['steps'] * p['seq_len'] for p in phases) * mb

@pytest.mark.parametrize('preset', ['tiny', 'laptop'])
def test_ablation_levers_change_one_thing_at_equal_tokens(preset):
    from compass_nbdev.train import TRAIN_PRESETS, train_config
    tp = TRAIN_PRESETS[preset]
    table = _bench('ablations').levers(tp['phases'], tp['micro_batch_size'])
    base = _tokens(tp['phases'], tp['micro_batch_size'])
    assert {'baseline', 'first_dense', 'alpha_1e-3', 'tokens_0.4x', 'pretrain_only', 'pretrain_anneal', 'aux_free', 'accum4_global'} <= set(table)
    for n, (mov, phases, tov) in table.items():
        mb = tov.get('micro_batch_size', tp['micro_batch_size']) * tov.get('grad_accum', 1)
        t = _tokens(phases, mb)
        if n == 'tokens_0.4x': assert 0.3 * base < t < 0.5 * base
        else: assert abs(t - base) <= 0.02 * base, n                  # equal tokens unless the lever is the token count
        changed = len(mov) + (phases != tp['phases']) + bool(tov)
        assert changed == (0 if n == 'baseline' else 1) or n == 'accum4_global', n
        train_config(preset, model_overrides=mov, phases=phases, **tov).model_config(1000)   # every lever is a valid config

def test_ablation_load_and_moe_vs_dense_seed_mean(tmp_path):
    f = tmp_path/'m.jsonl'
    f.write_text('\n'.join(json.dumps(r) for r in [{'load_max_mean': [3.0, 5.0]}, {'lm_loss': 1.0}, {'load_max_mean': [1.0, 2.0]}]))
    assert _bench('ablations').load_max_mean(f) == 1.5                # the last logged load, mean over layers
    m = _bench('moe_vs_dense').mean_over_seeds([{'mean_bpb': 2.0, 'bpb': {'en': 1.0}, 'tokens': 5}, {'mean_bpb': 3.0, 'bpb': {'en': 2.0}, 'tokens': 5}])
    assert (m['mean_bpb'], m['bpb'], m['mean_bpb_by_seed'], m['tokens']) == (2.5, {'en': 1.5}, [2.0, 3.0], 5)
