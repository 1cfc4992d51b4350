"Tests for the embedded synthetic e-commerce corpus (compass_nbdev.synthetic)."
import gzip, json
import pytest
from hypothesis import given, settings, strategies as st
from compass_nbdev.core import LANGS, CompassError, resolve_data_dir
from compass_nbdev.synthetic import (synthetic_corpus, write_synthetic_data_dir, review_rating, stars, unique_ratio,
                                     near_dup_survivors, load_lexicon, check_lexicon, format_price, KINDS,
                                     SIMPLIFIED_ONLY, TRADITIONAL_ONLY, synthetic_eval_sets, write_synthetic_eval, EVAL_SETS)

@pytest.fixture(scope='module')
def docs(): return synthetic_corpus(200)

def test_deterministic(docs):
    assert synthetic_corpus(200) == docs
    assert synthetic_corpus(200, seed=0) == docs

def test_seeds_differ(docs):
    other = synthetic_corpus(200, seed=1)
    assert len(other) == len(docs)
    same = sum(a['text'] == b['text'] for a, b in zip(docs, other))
    assert same < 0.1 * len(docs)

@settings(max_examples=10, deadline=None)
@given(n=st.integers(0, 12), seed=st.integers(0, 10**6), langs=st.lists(st.sampled_from(list(LANGS)), min_size=1, max_size=4, unique=True))
def test_any_seed_and_subset(n, seed, langs):
    docs = synthetic_corpus(n, langs=langs, seed=seed)
    assert len(docs) == n * len(langs)
    assert docs == synthetic_corpus(n, langs=langs, seed=seed)
    for l in langs:   # a language's stream does not depend on the other languages asked for
        assert [d for d in docs if d['lang'] == l] == synthetic_corpus(n, langs=[l], seed=seed)
    assert len({d['id'] for d in docs}) == len(docs)

def test_record_format(docs):
    for d in docs:
        assert {'id', 'text', 'lang', 'domain', 'source'} <= d.keys()
        assert d['domain'] == 'ecommerce' and d['source'] == f"synthetic_{d['kind']}"
        assert isinstance(d['text'], str) and d['text'].strip() and '{' not in d['text'] and '}' not in d['text']

def test_every_language_and_kind(docs):
    assert {d['lang'] for d in docs} == set(LANGS)
    for l in LANGS:
        assert {d['kind'] for d in docs if d['lang'] == l} == set(KINDS)
    # even a tiny corpus has one of each kind per language
    assert {(d['lang'], d['kind']) for d in synthetic_corpus(4)} == {(l, k) for l in LANGS for k in KINDS}

def test_ratings(docs):
    reviews = [d for d in docs if d['kind'] == 'review']
    assert reviews and all(d['rating'] in (1, 2, 3, 4, 5) for d in reviews)
    assert all(review_rating(d['text']) == d['rating'] for d in reviews)
    assert {d['rating'] for d in reviews} == {1, 2, 3, 4, 5}
    assert all('rating' not in d for d in docs if d['kind'] != 'review')
    assert stars(3) == '★★★☆☆' and review_rating('no stars here') is None

def test_traditional_chinese(docs):
    hant = ''.join(d['text'] for d in docs if d['lang'] == 'zh-Hant')
    hans = ''.join(d['text'] for d in docs if d['lang'] == 'zh')
    assert set('這價買') <= set(hant)
    assert not set('这价买') & set(hant)
    assert not SIMPLIFIED_ONLY & set(hant)
    assert set('这价买') <= set(hans) and not TRADITIONAL_ONLY & set(hans)

def test_scripts(docs):
    th = ''.join(d['text'] for d in docs if d['lang'] == 'th')
    assert sum('\u0e00' <= c <= '\u0e7f' for c in th) > 0.5 * len(th)
    vi = ''.join(d['text'] for d in docs if d['lang'] == 'vi')
    assert any(c in vi for c in 'ăâđêôơư')

def test_currencies(docs):
    for lang, sym in {'en': '$', 'id': 'Rp', 'ms': 'RM', 'th': '฿', 'vi': '₫', 'tl': '₱', 'pt': 'R$', 'zh': '¥', 'zh-Hant': 'NT$'}.items():
        assert any(sym in d['text'] for d in docs if d['lang'] == lang), lang
    lex = load_lexicon()
    assert format_price(10, lex['langs']['id']['currency']) == 'Rp160.000'
    assert format_price(10, lex['langs']['pt']['currency']) == 'R$ 55,90'

def test_variety():
    docs = synthetic_corpus(500)
    assert unique_ratio(docs) > 0.95
    assert near_dup_survivors(docs) > 0.85

def test_bad_args():
    with pytest.raises(CompassError, match="unknown language code 'xx'"): synthetic_corpus(3, langs=['xx'])
    with pytest.raises(CompassError, match='n_per_lang'): synthetic_corpus(-1)
    lex = load_lexicon()
    broken = {**lex, 'langs': {'vi': {**lex['langs']['vi'], 'colours': {'black': 'đen'}}}}
    with pytest.raises(CompassError, match=r'langs\.vi\.colours: missing'): check_lexicon(broken)

def test_data_dir(tmp_path):
    d = write_synthetic_data_dir(tmp_path/'data', n_per_lang=10, seed=3)
    assert resolve_data_dir(d) == d.resolve()
    for l in LANGS:
        with gzip.open(d/'corpus'/l/'synthetic_ecommerce.jsonl.gz', 'rt', encoding='utf-8') as f:
            assert [json.loads(x) for x in f] == synthetic_corpus(10, langs=[l], seed=3)
    rows = (d/'MANIFEST.tsv').read_text().splitlines()
    assert rows[0].split('\t')[:4] == ['path', 'kind', 'lang', 'source'] and len(rows) == 1 + len(LANGS)
    again = write_synthetic_data_dir(tmp_path/'data2', n_per_lang=10, seed=3)
    assert (again/'MANIFEST.tsv').read_text() == (d/'MANIFEST.tsv').read_text()  # byte-identical gzip (sha256 in manifest)

def test_eval_sets_are_fair_and_held_out():
    ev = synthetic_eval_sets(60)
    assert ev == synthetic_eval_sets(60) and set(ev) == set(EVAL_SETS) and all(set(v) == set(LANGS) for v in ev.values())
    for l, items in ev['rating'].items():
        for it in items:
            assert '★' not in it['text'] and '☆' not in it['text']         # no lookup: the stars are gone
            assert [review_rating(c) for c in it['choices']] == [1, 2, 3, 4, 5] and it['label'] == it['rating'] - 1
            assert all(c.endswith(it['text']) for c in it['choices'])
        assert len({it['rating'] for it in items}) >= 3                     # every language has several ratings
    for l, items in ev['category'].items():
        assert len({it['label'] for it in items}) == 4                      # the answer's position varies
        for it in items: assert '___' in it['text'] and len(set(it['choices'])) == 4
    train = {d['text'] for d in synthetic_corpus(200)}
    held = [d for v in ev['heldout'].values() for d in v]
    assert sum(d['text'] in train for d in held) < 0.2 * len(held)         # mostly new documents (short titles may repeat)
    assert not {d['id'] for d in held} & {d['id'] for d in synthetic_corpus(200)}

def test_write_synthetic_eval(tmp_path):
    d = write_synthetic_eval(tmp_path, n_per_lang=3, langs=['vi'])
    assert sorted(p.name for p in (d/'eval'/'synthetic').iterdir()) == ['category.vi.jsonl', 'heldout.vi.jsonl', 'rating.vi.jsonl']
    assert [json.loads(l) for l in (d/'eval/synthetic/category.vi.jsonl').read_text().splitlines()] == synthetic_eval_sets(3, 'vi')['category']['vi']
