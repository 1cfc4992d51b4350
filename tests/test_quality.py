"Tests of the model-based quality filter (13_quality) and its two hooks: the data stage's filter and the anneal phase's tier weights."
import gzip, json, os
from pathlib import Path

import numpy as np
import pytest

from compass_nbdev.core import ConfigError
from compass_nbdev.data import DataConfig, load_corpus, normalize_text, run as data_run
from compass_nbdev.quality import CURATED, NOISY, quality_scores, rank_by_lang, source_labels, train_split
from compass_nbdev.train import PackedData, PhaseConfig, TrainConfig, quality_tier, train_config

DATA_DIR = os.environ.get('COMPASS_DATA_DIR')
needs_data = pytest.mark.skipif(not DATA_DIR, reason='COMPASS_DATA_DIR is not set')

def _corpus(data_dir, n):
    ds = load_corpus(data_dir, max_docs_per_source=n, synthetic_docs_per_lang=n, seed=0)
    return [normalize_text(t) for t in ds['text']], list(ds['lang']), list(ds['source'])

# --- the classifier ------------------------------------------------------------------------------------------

def test_separates_synthetic_descriptions_from_reviews():
    texts, langs, srcs = _corpus('synthetic', 150)
    s, info = quality_scores(texts, langs, srcs, scale='prob')
    assert info['heldout_docs'] >= 100 and info['heldout_auc'] > 0.95                  # measured: 1.0
    y = source_labels(srcs)
    assert s[y == 1].mean() > s[y == 0].mean() + 0.5

@needs_data
def test_separates_curated_from_noisy_on_shared_data():
    texts, langs, srcs = _corpus(DATA_DIR, 400)
    s, info = quality_scores(texts, langs, srcs, scale='prob')
    assert info['heldout_docs'] >= 300 and info['heldout_auc'] > 0.95                  # measured: 0.99
    assert set(info['heldout_auc_by_lang']) == {'en', 'id', 'tl'}                       # the languages with both classes
    assert min(info['heldout_auc_by_lang'].values()) > 0.9

def test_train_split_holds_out_and_caps():
    y = np.array([1] * 300 + [0] * 40 + [-1] * 10); langs = ['en'] * 350
    tr, te = train_split(y, langs, max_per_cell=100, heldout=0.2, seed=0)
    assert not set(tr) & set(te) and (y[np.r_[tr, te]] >= 0).all()
    assert (y[tr] == 1).sum() == 100 and (y[tr] == 0).sum() == 32 and len(te) == 60 + 8

def test_rank_is_per_language():
    p = np.r_[np.linspace(0.9, 1, 50), np.linspace(0, 0.1, 50)]          # one language scores far below the other
    r = rank_by_lang(p, ['vi'] * 50 + ['th'] * 50)
    assert (r[:50] < 0.3).sum() == (r[50:] < 0.3).sum() == 14             # a threshold removes the same share of each

def test_no_labelled_sources_means_no_scores():
    s, info = quality_scores(['a b c'] * 4, ['en'] * 4, ['x', 'y', 'x', 'y'])
    assert s is None and 'skipped' in info
    with pytest.raises(ConfigError, match='both'): source_labels(['a'], curated=['a'], noisy=['a'])
    assert not set(CURATED) & set(NOISY)

# --- the data stage ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('d, msg', [({'quality_threshold': 1.5}, 'quality_threshold: must be in [0, 1]'),
                                    ({'quality_threshold': -0.1}, 'quality_threshold: must be in [0, 1]'),
                                    ({'quality_threshold': 0.3, 'quality_score': False}, 'quality_threshold: a threshold needs'),
                                    ({'quality_scale': 'z'}, "quality_scale: 'z' is not allowed"),
                                    ({'quality_curated': ['a'], 'quality_noisy': ['a']}, 'quality_noisy: sources in both')])
def test_threshold_settings_validated(d, msg):
    with pytest.raises(ConfigError) as e: DataConfig.from_dict(d)
    assert msg in str(e.value)

def test_data_report_counts_low_quality(tmp_path):
    t = 0.3
    s = data_run(DataConfig(quality_threshold=t, num_proc=1, synthetic_docs_per_lang=60), tmp_path, 'synthetic')
    scored = s['kept_docs'] + s['removed_by_reason']['low_quality']['docs']
    assert s['removed_by_reason']['low_quality']['docs'] == pytest.approx(t * scored, rel=0.25)
    assert s['quality']['heldout_auc'] > 0.9
    report = (tmp_path/'data'/'report.md').read_text()
    assert '| low_quality |' in report and 'held-out AUC' in report
    kept = [json.loads(l) for f in (tmp_path/'data'/'clean').glob('*.jsonl.gz') for l in gzip.open(f, 'rt')]
    assert len(kept) == s['kept_docs'] and min(r['quality'] for r in kept) >= t

def test_data_stage_without_threshold_keeps_all_and_scores(tmp_path):
    a = data_run(DataConfig(num_proc=1, synthetic_docs_per_lang=40), tmp_path/'a', 'synthetic')
    b = data_run(DataConfig(num_proc=1, synthetic_docs_per_lang=40, quality_score=False), tmp_path/'b', 'synthetic')
    assert 'low_quality' not in a['removed_by_reason'] and a['kept_docs'] == b['kept_docs']
    ra = json.loads(gzip.open(tmp_path/'a'/'data'/'clean'/'en.jsonl.gz', 'rt').readline())
    rb = json.loads(gzip.open(tmp_path/'b'/'data'/'clean'/'en.jsonl.gz', 'rt').readline())
    assert 0 < ra['quality'] <= 1 and 'quality' not in rb

# --- the anneal phase ----------------------------------------------------------------------------------------

class _Tok:                                    # one token per character: enough for packing
    eos_token_id = 0
    def __call__(self, texts, add_special_tokens=False): return {'input_ids': [[1 + ord(c) % 50 for c in t] for t in texts]}

def test_anneal_upweights_high_quality_documents():
    docs = [{'text': 'x' * 40, 'lang': 'en', 'domain': 'general', 'quality': q} for q in np.linspace(0.01, 1, 20)]
    pk = PackedData(docs, _Tok(), seed=0, high_quality_min=0.5)
    assert sorted(c[2] for c in pk.cells) == ['high', 'low']
    hi = [i for i, c in enumerate(pk.cells) if c[2] == 'high'][0]
    for preset in ('tiny', 'laptop', 'gpu-small', 'compass-v2'):
        pre, ann = train_config(preset).phases[:2]
        assert ann.name == 'anneal' and ann.quality_mix.get('high', 1) > 1 and not pre.quality_mix
        assert pk.weights(ann)[hi] > pk.weights(pre)[hi] + 0.1          # 0.5 -> 0.67 with {'high': 2}
    unscored = PackedData([{k: v for k, v in d.items() if k != 'quality'} for d in docs], _Tok())
    assert [c[2] for c in unscored.cells] == ['all']                     # no scores: the multiplier does not apply

def test_quality_tier_and_settings():
    assert [quality_tier(q, 0.5) for q in (None, 0.49, 0.5, 1.0)] == ['all', 'low', 'high', 'high']
    with pytest.raises(ConfigError, match='quality_mix.best'): PhaseConfig.from_dict({'quality_mix': {'best': 2.0}})
    with pytest.raises(ConfigError, match='high_quality_min'): TrainConfig.from_dict({'high_quality_min': 2})
