"The CPU benchmark scripts still run end to end (tiny sizes; the figures themselves live in bench/RESULTS.md)."
import re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.mark.parametrize('extra', [[], ['--keep-freed-memory']])
def test_model_cpu_bench_runs_and_prints_its_final_line(extra):
    args = ['--vocab', '256', '--hidden', '32', '--layers', '1', '--heads', '2', '--kv-heads', '1', '--experts', '4',
            '--k', '2', '--expert', '16', '--seq', '16', '--steps', '2', '--block', '2', '--impls', 'grouped_mm']
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'model_cpu.py'), *args, *extra], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r'^model_cpu ratio=\d+\.\d{3} peak_mb=\d+$', r.stdout.strip().splitlines()[-1]), r.stdout[-2000:]
    assert 'page faults' in r.stdout
    if extra: assert 'freed memory kept (mallopt)' in r.stdout
