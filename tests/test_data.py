"Tests of the data stage: loading with loud errors, cleaning, dedup, mixing, and the stage's outputs."
import gzip, json, os, warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import datasets
from compass_nbdev.core import CompassError, ConfigError, DataError, LANGS
from compass_nbdev.data import (DataConfig, read_jsonl, load_corpus, normalize_text, clean_doc, clean_corpus,
                                minhash_signatures, near_duplicates, mix_weights, sample_mix, run, split_doc,
                                chinese_variant, detect_lang, quality_signals, REASONS)

DATA_DIR = os.environ.get('COMPASS_DATA_DIR')
needs_data = pytest.mark.skipif(not DATA_DIR, reason='COMPASS_DATA_DIR is not set')

GOOD = {'id': 'a1', 'text': 'Barang bagus, pengiriman cepat, penjual ramah sekali.', 'lang': 'id', 'domain': 'ecommerce', 'source': 's'}

def line(**kw): return (json.dumps({**GOOD, **kw}, ensure_ascii=False) + '\n').encode()

def make_dir(tmp_path, files:dict, gz=True):
    "files: {'id/src': [bytes lines]} -> a data dir with corpus/<lang>/<src>.jsonl[.gz]."
    root = tmp_path/'data'
    for key, lines in files.items():
        lang, src = key.split('/')
        p = root/'corpus'/lang/(src + ('.jsonl.gz' if gz else '.jsonl'))
        p.parent.mkdir(parents=True, exist_ok=True)
        data = b''.join(lines)
        p.write_bytes(gzip.compress(data) if gz else data)
    return root

@pytest.fixture(autouse=True)
def no_env_data_dir(monkeypatch):
    "Tests choose their data dir explicitly; the real-data tests read DATA_DIR captured at import."
    monkeypatch.delenv('COMPASS_DATA_DIR', raising=False)

# --- bad input: every case names file and line --------------------------------------------------------------

@pytest.mark.parametrize('gz', [True, False])
@pytest.mark.parametrize('bad,problem', [
    (b'{"id": "x", "text": "unterminated\n', 'malformed JSON'),
    (b'{"id": "x", "lang": "id"}\n', "missing field 'text'"),
    (b'{"id": "x", "text": "caf\xe9 rusak", "lang": "id"}\n', 'invalid UTF-8'),
    (b'{"id": "x", "text": "hello there world", "lang": "xx"}\n', "unknown language code 'xx'"),
    (b'{"id": "x", "text": 42, "lang": "id"}\n', "field 'text' should be a string"),
    (b'["not", "an", "object"]\n', 'expected a JSON object'),
    (b'{"id": "x", "text": "bad \\ud800 surrogate", "lang": "id"}\n', 'lone surrogate'),
])
def test_bad_record_names_file_and_line(tmp_path, bad, problem, gz):
    root = make_dir(tmp_path, {'id/src': [line(id='1'), line(id='2'), bad, line(id='4')]}, gz=gz)
    with pytest.raises(DataError) as e: load_corpus(root)
    msg = str(e.value)
    assert f"src.jsonl{'.gz' if gz else ''}:3:" in msg and problem in msg, msg
    assert 'corpus/id' in msg

@pytest.mark.parametrize('bad,problem', [(b'{"text": "unterminated\n', 'malformed JSON'), (b'{"txt": "a"}\n', "missing field 'text'"),
                                         (b'{"text": "\xff\xfe"}\n', 'invalid UTF-8')])
def test_skip_mode_counts_and_warns(tmp_path, bad, problem):
    root = make_dir(tmp_path, {'id/src': [line(id='1'), bad, line(id='3'), bad]})
    st_ = {}
    with pytest.warns(UserWarning, match='skipped 2 bad records'):
        ds = load_corpus(root, on_error='skip', stats=st_)
    assert len(ds) == 2 and st_['skipped'] == 2 and st_['docs'] == 2
    assert all(problem in str(e) for e in st_['skipped_errors'])
    assert [str(e).split('src.jsonl.gz:')[1].split(':')[0] for e in st_['skipped_errors']] == ['2', '4']

def test_unknown_language_folder(tmp_path):
    root = make_dir(tmp_path, {'xx/src': [line()]})
    with pytest.raises(DataError, match=r"corpus/xx: unknown language code 'xx'"): load_corpus(root)

def test_record_language_must_match_folder(tmp_path):
    root = make_dir(tmp_path, {'id/src': [line(), line(lang='ms')]})
    with pytest.raises(DataError, match=r"src.jsonl.gz:2: record language 'ms' differs from its folder 'id'"): load_corpus(root)

def test_missing_data_dir(tmp_path):
    with pytest.raises(CompassError, match=r"data_dir: data directory '.*nope' does not exist"): load_corpus(tmp_path/'nope')

def test_missing_data_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv('COMPASS_DATA_DIR', str(tmp_path/'gone'))
    with pytest.raises(CompassError, match=r"COMPASS_DATA_DIR: data directory '.*gone' does not exist"): load_corpus()

def test_empty_corpus(tmp_path):
    (tmp_path/'data'/'corpus').mkdir(parents=True)
    with pytest.raises(DataError, match='no corpus files found'): load_corpus(tmp_path/'data')
    root = make_dir(tmp_path, {'th/empty': [b'\n']})
    with pytest.raises(DataError, match=r'empty.jsonl.gz: no usable records'): load_corpus(root)
    with pytest.raises(CompassError, match='has neither corpus/ nor eval/ inside'): load_corpus(tmp_path)
    (tmp_path/'ev'/'eval').mkdir(parents=True)
    with pytest.raises(DataError, match='no corpus/ folder'): load_corpus(tmp_path/'ev')

def test_corrupt_gzip(tmp_path):
    p = tmp_path/'data'/'corpus'/'id'/'src.jsonl.gz'; p.parent.mkdir(parents=True)
    p.write_bytes(gzip.compress(line() * 50)[:-20])
    with pytest.raises(DataError, match=r'src.jsonl.gz: cannot read'): load_corpus(tmp_path/'data')

def test_read_jsonl_general(tmp_path):
    p = tmp_path/'e.jsonl'
    p.write_bytes(b'{"question": "q", "label": 1}\n{"question": "q2", "label": "1"}\n{"label": 0}\n')
    with pytest.raises(DataError, match=r"e.jsonl:2: field 'label' should be int"): read_jsonl(p, types={'label': int})
    r = read_jsonl(p, on_error='skip', required=('question',), types={'label': int})
    assert len(r) == 1 and [e.where.split(':')[-1] for e in r.skipped] == ['2', '3']
    with pytest.raises(DataError, match='file not found'): read_jsonl(tmp_path/'none.jsonl')
    with pytest.raises(ConfigError): read_jsonl(p, on_error='ignore')

def test_load_filters_and_sampling(tmp_path):
    lines = [line(id=str(i), text=f'Dokumen nomor {i} tentang barang yang bagus sekali') for i in range(50)]
    root = make_dir(tmp_path, {'id/a': lines, 'id/b': lines[:5], 'ms/c': [line(lang='ms')]})
    assert set(load_corpus(root, langs=['ms'])['lang']) == {'ms'}
    assert set(load_corpus(root, sources=['b'])['source']) == {'s'}  # the record's own source wins over the file stem
    a, b = load_corpus(root, max_docs_per_source=10, seed=3), load_corpus(root, max_docs_per_source=10, seed=3)
    assert a['id'] == b['id'] and len(a) == 10 + 5 + 1
    assert load_corpus(root, max_docs_per_source=10, seed=4)['id'] != a['id']

def test_synthetic_fallback():
    ds = load_corpus(None, langs=['th', 'vi'], synthetic_docs_per_lang=20)
    assert ds.column_names == ['id', 'text', 'lang', 'domain', 'source'] and set(ds['lang']) == {'th', 'vi'} and len(ds) == 40

def test_synthetic_keyword_overrides_env(monkeypatch, tmp_path):
    monkeypatch.setenv('COMPASS_DATA_DIR', str(tmp_path/'gone'))
    ds = load_corpus('synthetic', langs=['th'], synthetic_docs_per_lang=5)
    assert len(ds) == 5 and set(ds['lang']) == {'th'}

def test_config_errors_name_key():
    with pytest.raises(ConfigError, match='near_dup_threshold'): DataConfig.from_dict({'near_dup_threshold': 1.5})
    with pytest.raises(ConfigError, match=r'thai.min_chars'): DataConfig.from_dict({'thai': {'min_chars': 'ten'}})
    with pytest.raises(ConfigError, match=r'latin.max_chars: must be > min_chars'): DataConfig.from_dict({'latin': {'max_chars': 5}})
    with pytest.raises(ConfigError, match='unknown key'): DataConfig.from_dict({'alpha': 0.3})
    with pytest.raises(ConfigError, match=r'near_dup_threshold: must be in \(0, 1\], got 0'): DataConfig.from_dict({'near_dup_threshold': 0.0})
    with pytest.raises(ConfigError, match=r'han.max_rep_frac: must be in \[0, 1\], got 1.5'): DataConfig.from_dict({'han': {'max_rep_frac': 1.5}})
    with pytest.raises(ConfigError, match=r'num_perm: must be in \[8, 1024\], got 4'): DataConfig.from_dict({'num_perm': 4})
    with pytest.raises(ConfigError, match=r"langs: item 1: 'xx' is not allowed"): DataConfig.from_dict({'langs': ['th', 'xx']})
    with pytest.raises(ConfigError, match=r'seed: must be >= 0, got -5'): DataConfig.from_dict({'seed': -5})
    with pytest.raises(ConfigError, match=r'mix_alpha: must be a finite number, got nan'): DataConfig.from_dict({'mix_alpha': float('nan')})
    with pytest.raises(ConfigError, match=r'max_doc_bytes: must be >= 1000'): DataConfig.from_dict({'max_doc_bytes': 10})
    assert DataConfig.from_dict(DataConfig().to_dict()) == DataConfig()

# --- normalization and cleaning ------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalize_idempotent(s):
    t = normalize_text(s)
    assert normalize_text(t) == t
    t.encode('utf-8')  # no lone surrogates left: always encodable (raises otherwise)
    assert '\x00' not in t and '\ufeff' not in t and t == t.strip()

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400), st.sampled_from(list(LANGS)))
def test_clean_doc_never_crashes(s, lang):
    t, reason, det = clean_doc(s, lang, DataConfig())
    assert reason is None or reason in REASONS
    assert t == normalize_text(s)

def test_filters_remove_what_they_say():
    cfg = DataConfig()
    assert clean_doc('ok', 'en', cfg)[1] == 'too_short'
    assert clean_doc('好', 'zh', cfg)[1] == 'too_short'
    assert clean_doc('สินค้าดีมาก ส่งไวมาก ประทับใจ', 'th', cfg)[1] is None     # 28 chars of Thai: kept
    assert clean_doc('very very nice very nice very nice very nice very nice', 'en', cfg)[1] == 'repetition'
    assert clean_doc('line one is here\nline one is here\nline one is here\nthe end', 'en', cfg)[1] == 'repetition'
    assert clean_doc('Price list: 1299 2399 3499 4599 5699 6799 7899', 'en', cfg)[1] == 'digits'
    assert clean_doc('★★★★★★★★★★★★★★★★ great ★★★★★★★★★★★', 'en', cfg)[1] == 'symbols'
    assert clean_doc('This product is really excellent, the delivery was fast and it works.', 'pt', cfg)[1] == 'lang_mismatch'
    assert clean_doc('This product is really excellent, the delivery was fast and it works.', 'pt', cfg.replace(langid='flag'))[1] is None
    assert clean_doc('這個產品很好，物流也快，下次還會再來買', 'zh', cfg)[1] == 'lang_mismatch'
    assert clean_doc('这个产品很好，物流也快，下次还会再来买', 'zh', cfg)[1] is None

def test_script_rules_detect_wrong_script():
    assert detect_lang('สินค้าดีมาก ส่งไวมาก ประทับใจ', 'vi') == 'th'
    assert detect_lang('Good product fast delivery thank you', 'th') == 'latin-script'
    assert chinese_variant('台灣的東西') == 'zh-Hant' and chinese_variant('台湾的东西') == 'zh'

def test_quality_thresholds_per_script():
    cfg = DataConfig.from_dict({'han': {'min_chars': 12}})
    assert clean_doc('这个产品很好物流也快', 'zh', cfg)[1] == 'too_short'        # 10 chars < 12
    assert clean_doc('这个产品很好物流也快', 'zh', DataConfig())[1] is None

# --- dedup ---------------------------------------------------------------------------------------------------

def _shingles(text, n, spaced=True):
    toks = text.lower().split() if spaced else list(''.join(text.lower().split()))
    return {tuple(toks)} if len(toks) < n else {tuple(toks[i:i+n]) for i in range(len(toks) - n + 1)}

def _jac(a, b): return len(a & b) / len(a | b)

words = st.sampled_from('barang bagus cepat sekali penjual ramah harga murah kualitas kirim warna ukuran sesuai pesanan toko'.split())
docs_st = st.lists(st.lists(words, min_size=1, max_size=25).map(' '.join), min_size=2, max_size=25)

@settings(max_examples=80, deadline=None)
@given(docs_st, st.sampled_from([0.5, 0.7, 0.9]))
def test_near_dedup_never_removes_a_doc_without_a_duplicate(texts, th):
    n = 3
    sig = minhash_signatures(texts, num_perm=128, ngram=n)
    dup = near_duplicates(sig, th)
    sh = [_shingles(t, n) for t in texts]
    for i in range(len(texts)):
        best = max(_jac(sh[i], sh[j]) for j in range(len(texts)) if j != i)
        if best < th - 0.35: assert not dup[i], (texts[i], best)
    assert not dup[0]                             # the first document is always kept
    for i in range(len(texts)):                   # exact copies of an earlier doc are always caught
        if texts[i] in texts[:i]: assert dup[i]

@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=30))
def test_exact_dedup_removes_exactly_repeats(texts):
    ds = datasets.Dataset.from_dict({'id': [str(i) for i in range(len(texts))], 'text': texts, 'lang': ['en'] * len(texts),
                                     'domain': ['general'] * len(texts), 'source': ['s'] * len(texts)})
    cfg = DataConfig(num_proc=1, near_dup_threshold=None, langid='off', latin=DataConfig().latin.replace(
        min_chars=0, min_words=0, max_symbol_ratio=1.0, max_digit_ratio=1.0, max_rep_frac=1.0, max_dup_line_frac=1.0))
    _, rep = clean_corpus(ds, cfg)
    norm = [normalize_text(t) for t in texts]
    expect = ['exact_dup' if norm[i] in norm[:i] else 'kept' for i in range(len(texts))]
    assert rep.docs.reason.fillna('kept').tolist() == expect

def test_minhash_estimates_jaccard_and_char_shingles():
    rng = np.random.default_rng(0)
    vocab = [f'w{i}' for i in range(400)]
    a = list(rng.choice(vocab, 300)); b = a[:200] + list(rng.choice(vocab, 100))
    ta, tb = ' '.join(a), ' '.join(b)
    sig = minhash_signatures([ta, tb], num_perm=256, ngram=3)
    assert abs((sig[0] == sig[1]).mean() - _jac(_shingles(ta, 3), _shingles(tb, 3))) < 0.08
    za, zb = '这个产品很好物流也快下次还会再来买' * 2, '这个产品很好物流也快下次还会再来' * 2
    sig = minhash_signatures([za, zb], spaced=False, num_perm=256, ngram=3)
    assert abs((sig[0] == sig[1]).mean() - _jac(_shingles(za, 3, False), _shingles(zb, 3, False))) < 0.1
    # a batch gives the same signatures as one doc at a time
    one = np.concatenate([minhash_signatures([t], num_perm=64, ngram=3) for t in (ta, tb, 'x')])
    np.testing.assert_array_equal(one, minhash_signatures([ta, tb, 'x'], num_perm=64, ngram=3))

def test_parallel_matches_serial():
    ds = load_corpus(None, synthetic_docs_per_lang=40)
    k1, r1 = clean_corpus(ds, DataConfig(num_proc=1))
    k2, r2 = clean_corpus(ds, DataConfig(num_proc=2))
    assert k1['id'] == k2['id'] and r1.docs.reason.fillna('').tolist() == r2.docs.reason.fillna('').tolist()

# --- mixing --------------------------------------------------------------------------------------------------

counts_st = st.dictionaries(st.sampled_from(list(LANGS)), st.integers(1, 10**9), min_size=1)

@settings(max_examples=200, deadline=None)
@given(counts_st, st.floats(0.01, 1.0), st.one_of(st.none(), st.floats(0, 1)))
def test_mix_weights_sum_to_one(counts, alpha, share):
    c = {(l, 'ecommerce' if i % 2 else 'general'): n for i, (l, n) in enumerate(counts.items())}
    w = mix_weights(c, DataConfig(mix_alpha=alpha, ecommerce_share=share))
    assert abs(w.weight.sum() - 1) < 1e-9 and (w.weight > 0).all()
    lang_w = w.groupby('lang').weight.sum()
    n = pd_series(counts) ** alpha
    np.testing.assert_allclose(lang_w.sort_index().values, (n / n.sum()).sort_index().values, rtol=1e-9)

def pd_series(d):
    import pandas as pd
    return pd.Series(d, dtype=float)

def test_mix_temperature_upsamples_small_languages():
    c = {'en': 10**6, 'th': 10**3}
    small = [mix_weights(c, DataConfig(mix_alpha=a)).set_index('lang').weight['th'] for a in (1.0, 0.5, 0.1)]
    assert small[0] < small[1] < small[2] < 0.5
    w = mix_weights({('en', 'ecommerce'): 10, ('en', 'general'): 90}, DataConfig(ecommerce_share=0.4)).set_index('domain')
    assert abs(w.weight['ecommerce'] - 0.4) < 1e-12

_SMALL = {}
def small_corpus():
    if not _SMALL: _SMALL['ds'] = load_corpus(None, langs=['en', 'th', 'zh-Hant'], synthetic_docs_per_lang=15)
    return _SMALL['ds']

@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 300))
def test_sample_mix_deterministic_and_exact(seed, n):
    ds = small_corpus()
    cfg = DataConfig(seed=seed, mix_alpha=0.5)
    a, b = sample_mix(ds, cfg, n_docs=n), sample_mix(ds, cfg, n_docs=n)
    assert a['id'] == b['id'] and len(a) == n

def test_sample_mix_bytes_and_args():
    ds = load_corpus(None, langs=['en', 'vi'], synthetic_docs_per_lang=30)
    s = sample_mix(ds, DataConfig(), n_bytes=20_000)
    got = sum(len(t.encode()) for t in s['text'])
    assert 10_000 < got < 30_000
    with pytest.raises(ConfigError, match='exactly one'): sample_mix(ds, DataConfig())

# --- the stage -----------------------------------------------------------------------------------------------

def test_run_synthetic(tmp_path):
    out = tmp_path/'run'/'data'
    s = run(DataConfig(synthetic_docs_per_lang=30, num_proc=1), tmp_path/'run')
    for f in ('report.md', 'report.png', 'mix.png', 'mix.csv', 'summary.json'): assert (out/f).stat().st_size > 0, f
    assert not list(out.rglob('.*.tmp'))                                  # atomic writes leave no temporaries
    kept = sum(len(read_jsonl(p)) for p in (out/'clean').glob('*.jsonl.gz'))
    assert kept == s['kept_docs'] and s['kept_docs'] + s['removed_docs'] == s['docs_in'] == 30 * len(LANGS)
    assert s['kept_bytes'] + s['removed_bytes'] == s['bytes_in']
    assert json.loads((out/'summary.json').read_text())['kept_docs'] == s['kept_docs']
    assert '# Data report' in (out/'report.md').read_text()

def test_run_skip_reports_count(tmp_path):
    root = make_dir(tmp_path, {'id/src': [line(id=str(i), text=f'Barang nomor {i} bagus sekali dan pengiriman cepat') for i in range(5)] + [b'{oops\n']})
    with pytest.raises(DataError, match=r'src.jsonl.gz:6: malformed JSON'): run(DataConfig(num_proc=1), tmp_path/'o1', root)
    with pytest.warns(UserWarning):
        s = run(DataConfig(num_proc=1, on_error='skip'), tmp_path/'o2', root)
    assert s['skipped_records'] == 1 and 'src.jsonl.gz:6' in s['skipped_errors'][0]
    assert 'Skipped bad records: 1' in (tmp_path/'o2'/'data'/'report.md').read_text()

# --- hardening (#23): stray files, hidden folders, huge documents ----------------------------------------------

def test_hidden_entries_are_ignored_and_stray_files_reported(tmp_path):
    root = make_dir(tmp_path, {'id/src': [line(id=str(i), text=f'Barang nomor {i} bagus sekali dan pengiriman cepat') for i in range(5)]})
    (root/'corpus'/'.ipynb_checkpoints').mkdir()                     # JupyterLab leaves these behind
    (root/'corpus'/'.ipynb_checkpoints'/'src-checkpoint.jsonl').write_bytes(line())
    (root/'corpus'/'id'/'.DS_Store').write_bytes(b'\0')
    (root/'corpus'/'id'/'more.json').write_bytes(line(id='m'))       # data in the wrong format: listed, not silent
    st_ = {}
    ds = load_corpus(root, stats=st_)
    assert len(ds) == 5 and st_['ignored'] == ['corpus/id/more.json']
    s = run(DataConfig(num_proc=1), tmp_path/'run', root)
    assert s['ignored_files'] == ['corpus/id/more.json']
    assert '`corpus/id/more.json`' in (tmp_path/'run'/'data'/'report.md').read_text()

def test_huge_document_is_split_and_counted(tmp_path):
    para = 'Barang bagus sekali dan pengiriman cepat, penjual ramah. ' * 40 + '\n'
    huge = para * 600                                                   # ~1.4 MB in one JSON line
    root = make_dir(tmp_path, {'id/src': [line(id='big', text=huge), line(id='small')]})
    st_ = {}
    ds = load_corpus(root, stats=st_, max_doc_bytes=100_000)
    assert st_['split_docs'] == 1 and max(len(t.encode()) for t in ds['text']) <= 100_000
    assert ''.join(t for t, i in zip(ds['text'], ds['id']) if i.startswith('big#')) == huge
    s = run(DataConfig(num_proc=1, max_doc_bytes=100_000, near_dup_threshold=None, exact_dedup=False), tmp_path/'run', root)
    assert s['split_docs'] == 1 and s['docs_in'] == len(ds)
    assert 'Documents split (over 100000 bytes): 1' in (tmp_path/'run'/'data'/'report.md').read_text()

@settings(max_examples=60, deadline=None)
@given(st.text(st.sampled_from('ab \nไทย好'), max_size=3000), st.integers(1000, 1200))
def test_split_doc_pieces_fit_and_rejoin(text, max_bytes):
    parts = split_doc(text, max_bytes)
    assert ''.join(parts) == text and all(len(p.encode()) <= max_bytes for p in parts)

# --- real data (skipped without COMPASS_DATA_DIR) ------------------------------------------------------------

@needs_data
def test_real_corpus_loads_and_cleans():
    st_ = {}
    ds = load_corpus(DATA_DIR, max_docs_per_source=100, stats=st_)
    assert st_['skipped'] == 0 and set(ds['lang']) == set(LANGS) and len(ds) == st_['docs']
    kept, rep = clean_corpus(ds, DataConfig(num_proc=2))
    s = rep.summary()
    assert 0 < s['removed_docs'] < 0.3 * s['docs_in'] and s['kept_docs'] == len(kept)
    assert set(rep.table(('lang',)).index) == set(LANGS)

@needs_data
def test_real_chinese_variants_match_labels():
    ds = load_corpus(DATA_DIR, langs=['zh', 'zh-Hant'], max_docs_per_source=300)
    got = [chinese_variant(t) for t in ds['text']]
    for lang in ('zh', 'zh-Hant'):
        v = [g for g, l in zip(got, ds['lang']) if l == lang and g is not None]
        assert sum(g == lang for g in v) / len(v) > 0.9, lang
