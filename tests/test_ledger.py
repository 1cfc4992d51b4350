"The assumptions ledger: every preset field has a row; rows are well formed; values come from the presets."
import pytest
import compass_nbdev.ledger as L

def test_every_preset_field_has_a_row():
    assert L.missing_rows() == set()

def test_a_new_preset_field_is_caught(monkeypatch):
    real = L.presets()
    real['laptop']['train'] = {**real['laptop']['train'], 'brand_new_knob': 1}
    monkeypatch.setattr(L, 'presets', lambda: real)
    assert L.missing_rows() == {'train.brand_new_knob'}

def test_rows_are_well_formed():
    for k, (status, says, why) in L.LEDGER.items():
        assert status in (L.PAPER, L.ASSUMED, L.OURS), k
        if status == L.PAPER: assert says.strip(), f"{k}: a 'paper' row gives what the report says"
        else: assert why.strip(), f"{k}: an assumed row or our addition gives our reason"

def test_values_are_read_from_the_code():
    r = L.resolved('compass-v2')
    rows = {x['setting']: x for x in L.ledger_rows(('compass-v2',))}
    assert rows['model.n_shared_experts']['compass-v2'] == r['model'].n_shared_experts == 2
    assert rows['train.pretrain_to_anneal']['compass-v2'] == '2:1'  # the report's 8T:4T
    assert rows['train.phases.steps']['compass-v2'] == ' / '.join(str(p.steps) for p in r['train'].phases)
    assert 'pt' in rows['tokenizer.groups']['compass-v2']['general']

def test_table_escapes_pipes():
    t = L.ledger_table(('laptop',), section='sft')
    assert '\\|im_start\\|' in t and all(l.startswith('| sft.') for l in t.splitlines()[2:])
