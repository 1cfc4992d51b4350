"Tests for the data cards (data_cards/*.md) and compass_nbdev.datacards."
import os, re
from pathlib import Path
import pytest
from compass_nbdev.core import DataError, LANGS
from compass_nbdev.datacards import (read_card, read_cards, cards_table, check_cards, read_manifest, find_cards_dir,
                                     license_flag, CARD_FIELDS, CARD_SECTIONS, LICENSE_FLAGS, INDEX_COLS)

CARDS = Path(__file__).resolve().parent.parent/'data_cards'

@pytest.fixture(scope='module')
def cards(): return read_cards(CARDS)

@pytest.fixture
def data_dir():
    d = os.environ.get('COMPASS_DATA_DIR')
    if not d or not (Path(d)/'MANIFEST.tsv').is_file(): pytest.skip('COMPASS_DATA_DIR not set')
    return Path(d)

def test_every_card_parses(cards):
    assert len(cards) == len(list(CARDS.glob('*.md')))
    for c in cards:
        assert all(c[k] not in (None, '') for k in CARD_FIELDS)
        assert c['license_flag'] in LICENSE_FLAGS and c['kind'] in ('corpus', 'eval')
        assert set(c['languages']) <= set(LANGS)
        assert all(len(c['sections'][s]) > 20 for s in CARD_SECTIONS), c['source']

def test_flags_match_licenses(cards):
    for c in cards:
        lic, flag = c['license'].lower(), c['license_flag']
        if re.search(r'\bnc\b', lic): assert flag == 'non-commercial', c['source']
        elif 'research' in lic: assert flag == 'research-only', c['source']
        elif 'none stated' in lic: assert flag == 'no-license', c['source']
        if flag != 'ok': assert '**⚠' in c['sections']['License'], f"{c['source']}: restricted license needs a bold warning"

def test_synthetic_card(cards):
    syn = [c for c in cards if c['source'] == 'synthetic_ecommerce']
    assert len(syn) == 1 and set(syn[0]['languages']) == set(LANGS) and syn[0]['license_flag'] == 'ok'

def test_prose_is_specific(cards):
    # the quirks and upstream sections are written per source, not copied between cards
    for sec in ('Known quirks', 'Upstream', 'Intended use'):
        texts = [c['sections'][sec] for c in cards]
        assert len(set(texts)) == len(texts), sec

def test_every_manifest_source_has_a_card(cards, data_dir):
    sources = {r['source'] for r in read_manifest(data_dir)}
    assert sources <= {c['source'] for c in cards}
    assert check_cards(cards, data_dir) == []

def test_domain_matches_records(cards, data_dir):
    import gzip, json
    by_src = {c['source']: c for c in cards}
    for r in read_manifest(data_dir):
        if r['kind'] != 'corpus': continue
        with gzip.open(data_dir/r['path'], 'rt', encoding='utf-8') as f: first = json.loads(f.readline())
        assert first['domain'] == by_src[r['source']]['domain'], r['source']

def test_table(cards):
    df = cards_table(cards)
    assert list(df.columns) == INDEX_COLS and len(df) == len(cards)
    md = cards_table(cards, markdown=True)
    assert md.count('\n') == len(cards) + 1 and '**non-commercial**' in md

def test_errors_name_file_and_field(tmp_path):
    good = CARDS/'ntrex.md'
    text = good.read_text(encoding='utf-8')
    (tmp_path/'ntrex.md').write_text(re.sub(r'^records: .*\n', '', text, flags=re.M), encoding='utf-8')
    with pytest.raises(DataError, match=r"ntrex\.md: records: front matter lacks field 'records'"): read_card(tmp_path/'ntrex.md')
    (tmp_path/'ntrex.md').write_text(text.replace('license_flag: ok', 'license_flag: no-license'), encoding='utf-8')
    with pytest.raises(DataError, match=r"ntrex\.md: license_flag: 'no-license' disagrees"): read_card(tmp_path/'ntrex.md')
    (tmp_path/'ntrex.md').write_text(text.replace('## Known quirks', '## Quirks'), encoding='utf-8')
    with pytest.raises(DataError, match="missing section '## Known quirks'"): read_card(tmp_path/'ntrex.md')
    (tmp_path/'other.md').write_text(text, encoding='utf-8'); (tmp_path/'ntrex.md').unlink()
    with pytest.raises(DataError, match='file name should be ntrex.md'): read_cards(tmp_path)

def test_check_cards_reports_mismatch(tmp_path, cards):
    c = [x for x in cards if x['source'] == 'ntrex']
    (tmp_path/'MANIFEST.tsv').write_text("path\tkind\tlang\tsource\tupstream\tlicense\trecords\tbytes\tsha256\n"
        f"eval/bpb/ntrex.en.jsonl\teval-bpb\ten\tntrex\tx\tCC-BY-SA-4.0\t5\t{c[0]['bytes']}\tx\n")
    probs = check_cards(c, tmp_path)
    assert any('records: card says' in p for p in probs) and any('languages' in p for p in probs)

def test_license_flag_rules():
    assert license_flag('CC-BY-NC-SA-4.0') == 'non-commercial'
    assert license_flag('none stated') == 'no-license'
    assert license_flag('copyright Reuters; free for research purposes only') == 'research-only'
    assert license_flag('LGPL; platform terms apply') == 'unclear'
    assert license_flag('CC0-1.0') == 'ok'

def test_find_cards_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(CARDS.parent/'nbs' if (CARDS.parent/'nbs').is_dir() else CARDS.parent)
    assert find_cards_dir().resolve() == CARDS.resolve()
