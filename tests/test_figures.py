"""Figures in prose are the recorded ones (issue 18 §3: results as data, so no figure drifts).

Two conventions, both checked in every markdown cell of every notebook under nbs/:
- a figure followed by a marker, `6.00%<!-- rec moe_vs_dense.gain_pct -->` (an HTML comment: invisible in Jupyter,
  on GitHub and on the docs site). The key is `record.field`, or a path into the record such as
  `tokenizer.details.zh_ratio` (list items by position: `ablations.details.levers.0.bpb`). The figure must equal the recorded value rounded to the decimals shown;
  a unit of a few characters may sit between the number and the marker (`195 s`, `1.450×`, `**6.00%**`).
- a benchmark's final line quoted in backticks, `` `moe_vs_dense bpb_moe=3.3118 ...` ``: every field must be the
  record's (only lines whose first word names a record are checked).
Besides: bench/RESULTS.md is what tools/make_results.py makes of the records, every record names a benchmark
script, and no absolute path of the development machine is anywhere in the tree.
"""
import importlib.util, json, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('make_results', ROOT/'tools'/'make_results.py')  # tools/ is no package
make_results = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(make_results)

MARK = re.compile(r'(?P<num>-?\d[\d,]*(?:\.\d+)?)(?P<unit>[^\d<\n]{0,12}?)<!--\s*rec\s+(?P<key>[\w.-]+)\s*-->')
LINE = re.compile(r'`(?P<name>\w+)(?P<kv>(?: \w+=[^\s`]+)+)`')
RECS = {r['name']: r for r in make_results.records()}
NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)


def lookup(key:str):
    "The recorded value at `record.field` or `record.path.to.value`."
    name, *path = key.split('.')
    if name not in RECS: raise KeyError(f'no record {name!r} in bench/results/')
    rec = RECS[name]
    if len(path) == 1 and path[0] in rec['fields']: return rec['fields'][path[0]]
    v = rec
    for p in path: v = v[int(p)] if isinstance(v, list) else v[p]   # a list's items by position: `details.levers.0.bpb`
    return v


def same(shown:str, value)->bool:
    "Does a figure as printed equal a recorded value (rounded to the decimals shown)?"
    s = shown.replace(',', '')
    if isinstance(value, bool) or not isinstance(value, (int, float)): return s == str(value)
    try: x = float(s)
    except ValueError: return False
    d = len(s.split('.')[1]) if '.' in s else 0
    return abs(round(float(value), d) - x) < 10**-d / 2 + 1e-9


def markdown(nb:Path):
    "(cell index, text) of each markdown cell."
    cells = json.loads(nb.read_text())['cells']
    return [(i, ''.join(c['source'])) for i, c in enumerate(cells) if c['cell_type'] == 'markdown']


def problems(text:str)->list[str]:
    "Every figure in `text` that is not the recorded one."
    out = []
    for m in MARK.finditer(text):
        try: v = lookup(m['key'])
        except (KeyError, TypeError) as e: out.append(f"{m['num']}{m['unit']} <!-- rec {m['key']} -->: {e}"); continue
        if not same(m['num'], v): out.append(f"{m['num']}{m['unit']} marked {m['key']}, but the record says {v}")
    for m in LINE.finditer(text):
        if m['name'] not in RECS: continue
        rec = RECS[m['name']]['fields']
        for k, v in (kv.split('=', 1) for kv in m['kv'].split()):
            if k not in rec: out.append(f"`{m['name']} ... {k}={v}`: the record has no field {k!r}")
            elif not same(v, rec[k]): out.append(f"`{m['name']} ... {k}={v}`: the record says {k}={rec[k]}")
    return out


def test_checker_catches_drift():
    "The checker itself: a wrong figure, a wrong rounding and a missing key fail; the right ones pass."
    name, field = 'moe_vs_dense', 'gain_pct'
    v = RECS[name]['fields'][field]
    assert problems(f"**{v:.2f}%**<!-- rec {name}.{field} -->") == []
    assert problems(f"{v:.1f} %<!-- rec {name}.{field} -->") == []
    assert problems(f"{v + 1:.2f}%<!-- rec {name}.{field} -->")
    assert problems(f"{v:.2f}<!-- rec {name}.no_such_field -->")
    assert problems(f"`{name} {field}={v + 0.5:.2f}`") and not problems(f"`{name} {field}={v:.2f}`")
    assert lookup('ablations.details.levers.0.lever') == 'baseline'   # list items by position
    assert same('6,432', 6432) and same('1.450', 1.45) and not same('1.46', 1.45) and same('3.312', 3.3118)


@pytest.mark.parametrize('nb', NBS, ids=lambda p: str(p.relative_to(ROOT/'nbs')))
def test_figures_are_recorded(nb):
    "Every marked or quoted figure in a notebook's prose is the recorded one."
    bad = [f'cell {i}: {p}' for i, t in markdown(nb) for p in problems(t)]
    assert not bad, f'{nb.name}: figures that are not the recorded ones:\n' + '\n'.join(bad)


def test_pages_read_records():
    "The workshop guide and the paper-to-code page quote their figures from records."
    for name in ('00_guide', '99_paper_to_code'):
        text = '\n'.join(t for _, t in markdown(ROOT/'nbs'/'workshop'/f'{name}.ipynb'))
        assert len(MARK.findall(text)) >= 5, f'{name}: figures should carry <!-- rec ... --> markers'


def test_results_md_is_generated():
    r = subprocess.run([sys.executable, str(ROOT/'tools'/'make_results.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_records_are_complete():
    "Every record has its line, fields, date and machine, and names a benchmark script."
    for name, r in RECS.items():
        assert {'name', 'line', 'fields', 'date', 'machine'} <= set(r), name
        assert r['line'].split()[0] == name and (ROOT/'bench'/f'{make_results.script(name)}.py').is_file(), name


def test_no_machine_paths():
    "No absolute path of the development machine in any tracked file."
    r = subprocess.run(['git', 'grep', '-n', '-I', '-E', '/work/|/root/', '--', '.', ':!tests/test_figures.py'],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.stdout == '', r.stdout[:2000]
