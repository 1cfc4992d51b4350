"Tests for compass_nbdev.tokenizer: round trips, merging, special tokens, determinism and config errors."
import json, importlib.util
from pathlib import Path
import pytest
from tokenizers import Tokenizer
from hypothesis import given, settings, strategies as st, HealthCheck
from compass_nbdev.core import ConfigError, DataError, CompassError, LANGS
from compass_nbdev.synthetic import synthetic_corpus
from compass_nbdev.tokenizer import (TokenizerConfig, SPECIAL_TOKENS, RESERVED_TOKENS, MIN_VOCAB, train_bpe, merge_bpe,
                                     bpe_parts, apply_merges, to_hf, sanitize_text, train_tokenizer, save_tokenizer,
                                     group_texts, eval_tokenizer_stage, headline, load_peers,
                                     token_counter, show_split, CHAR_SETS, char_set, _packaged_chat_template)
import compass_nbdev.tokenizer as tkmod

SYN = synthetic_corpus(60, seed=0)
TEXTS = [r['text'] for r in SYN]
GENERAL = ['en', 'zh', 'id', 'ms', 'th', 'vi', 'tl', 'pt']

@pytest.fixture(scope='module')
def trained():
    cfg = TokenizerConfig.preset('tiny', vocab_size=1200, sizes={'general': 900, 'other': 400, 'zh': 500}, bytes_per_lang=50_000)
    return train_tokenizer(cfg, SYN)

@pytest.fixture(scope='module')
def hf(trained): return trained.tokenizer

# Text strategies: arbitrary Unicode (hypothesis never generates surrogates here), and targeted mixes.
thai = st.text(alphabet=st.characters(min_codepoint=0x0E00, max_codepoint=0x0E7F), max_size=60)
marks = st.text(alphabet=st.characters(categories=['Mn', 'Mc', 'Me']), max_size=20)
emoji = st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), max_size=10)
controls = st.text(alphabet=st.characters(categories=['Cc', 'Cf', 'Zs', 'Zl', 'Zp']), max_size=20)
specials = st.sampled_from(SPECIAL_TOKENS + ['<|', '|>', '<think', 'im_start'])
mixed = st.lists(st.one_of(st.text(max_size=30), thai, marks, emoji, controls, specials,
                           st.sampled_from(TEXTS[:50])), max_size=12).map(''.join)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

@FAST
@given(s=mixed)
def test_roundtrip(hf, s):
    ids = hf(s)['input_ids']
    assert hf.decode(ids) == s

@FAST
@given(s=st.text())
def test_roundtrip_any_unicode(hf, s):
    assert hf.decode(hf(s)['input_ids']) == s

@pytest.mark.parametrize('s', ["a" * 200_000, "สินค้าดีมาก " * 20_000, "😀\u0301" * 30_000, "\x00\r\n\t" * 10_000])
def test_roundtrip_long(hf, s):
    assert hf.decode(hf(s)['input_ids']) == s

@FAST
@given(s=mixed)
def test_plain_text_never_gives_special_ids(hf, s):
    special_ids = set(hf.convert_tokens_to_ids(SPECIAL_TOKENS))
    assert not set(hf(s)['input_ids']) & special_ids

def test_special_tokens(hf, tmp_path):
    assert [hf.bos_token, hf.eos_token, hf.pad_token] == SPECIAL_TOKENS[:3]
    assert hf.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    ids = hf.convert_tokens_to_ids(['<|im_start|>', '<think>']) + hf("ok")['input_ids'] + hf.convert_tokens_to_ids(['</think>'])
    assert hf.decode(ids) == "<|im_start|><think>ok</think>"
    from transformers import AutoTokenizer
    d = save_tokenizer(hf, tmp_path/'tok')
    at = AutoTokenizer.from_pretrained(d)
    assert at("<think>x</think>")['input_ids'] == hf("<think>x</think>")['input_ids']
    assert not set(at("<think>x</think>")['input_ids']) & set(range(len(SPECIAL_TOKENS)))
    assert at.convert_tokens_to_ids(RESERVED_TOKENS) == [3, 4, 5, 6]

def test_unpaired_surrogates(hf):
    "Lone surrogates are not valid Unicode: the tokenizer refuses them; `sanitize_text` replaces them with U+FFFD."
    with pytest.raises((TypeError, UnicodeEncodeError)): hf("a\ud800b")
    assert sanitize_text("a\ud800b") == "a\ufffdb"
    assert sanitize_text("\ud83d\ude00") == "😀"  # a real pair becomes one character
    s = sanitize_text("x\udfff\ud800y")
    assert hf.decode(hf(s)['input_ids']) == s == "x\ufffd\ufffdy"

@FAST
@given(s=mixed)
def test_merged_never_worse_than_base(trained, s):
    gen, merged = Tokenizer.from_str(trained.subs['general'].to_str()), trained.tokenizer.backend_tokenizer
    gen.encode_special_tokens = merged.encode_special_tokens = True  # special strings count as plain text in both
    assert len(merged.encode(s, add_special_tokens=False).ids) <= len(gen.encode(s, add_special_tokens=False).ids)

@FAST
@given(s=mixed)
def test_reference_bpe_matches_tokenizers(trained, s):
    merged = trained.tokenizer.backend_tokenizer
    _, merges = bpe_parts(merged)
    ranks = {m: i for i, m in enumerate(merges)}
    for chunk, _ in merged.pre_tokenizer.pre_tokenize_str(s):
        assert apply_merges(chunk, ranks) == [t.value for t in merged.model.tokenize(chunk)]

def test_merge_adds_tokens_and_dedupes(trained):
    rep = trained.report
    assert rep['vocab_size'] <= 1200
    assert rep['merge']['zh']['added'] > 0 and rep['merge']['zh']['duplicate'] > 0
    v = trained.tokenizer.backend_tokenizer.get_vocab()
    assert sorted(v.values()) == list(range(len(v)))

def test_deterministic(tmp_path):
    cfg = TokenizerConfig.preset('tiny', bytes_per_lang=30_000)
    outs = []
    for i in range(2):
        d = save_tokenizer(train_tokenizer(cfg, SYN).tokenizer, tmp_path/f't{i}')
        outs.append((d/'tokenizer.json').read_bytes())
    assert outs[0] == outs[1]
    other = save_tokenizer(train_tokenizer(cfg.replace(seed=1, bytes_per_lang=2000), SYN).tokenizer, tmp_path/'t2')
    assert (other/'tokenizer.json').read_bytes() != outs[0]

def test_pre_tokenizer_keeps_thai_marks():
    assert show_split("สินค้าดีมาก ส่งเร็ว") == ["สินค้าดีมาก", " ส่งเร็ว"]
    assert len(show_split("สินค้าดีมาก", 'gpt4')) > 1

@pytest.mark.parametrize('d,where,allowed', [
    ({'vocab_size': 100}, 'vocab_size', 'must be >= 263, got 100'),
    ({'sizes': {'general': 3072, 'other': 512, 'zh': 1024, 'xx': 600}}, 'sizes', 'allowed: general, other, zh'),
    ({'groups': {'general': ['en'], 'misc': ['th']}, 'sizes': {'general': 3072, 'misc': 600}, 'vocab_size': 2000}, 'sizes', 'between'),
    ({'vocab_size': 100_000}, 'sizes', 'sum of all sizes'),
    ({'groups': {'general': ['en', 'klingon']}, 'sizes': {'general': 3000}, 'vocab_size': 3000}, 'groups.general', 'allowed: en'),
    ({'split': 'whitespace'}, 'split', "'sea', 'gpt4'"),
    ({'lang_weights': {'th': 0}}, 'lang_weights', '> 0'),
    ({'colour': 'blue'}, 'colour', 'allowed: vocab_size'),
])
def test_config_errors(d, where, allowed):
    with pytest.raises(ConfigError) as e: TokenizerConfig.from_dict(d)
    assert e.value.where == where and allowed in str(e.value)

def test_preset_errors():
    with pytest.raises(ConfigError, match="tokenizer.preset: unknown preset 'xl'; choose one of tiny, laptop, laptop-long, gpu-small, compass-v2"): TokenizerConfig.preset('xl')
    with pytest.raises(ConfigError, match=r'vocab_size: must be >= 263, got 100'): TokenizerConfig.from_dict({'vocab_size': 100})
    with pytest.raises(ConfigError, match=r"lang_weights: 'th': must be > 0, got -1"): TokenizerConfig.from_dict({'lang_weights': {'th': -1}})
    with pytest.raises(ConfigError, match=r"max_token_length: 'zh': must be >= 1, got 0"): TokenizerConfig.from_dict({'max_token_length': {'zh': 0}})
    with pytest.raises(ConfigError, match=r"lang_weights: 'en': must be a finite number, got inf"): TokenizerConfig.from_dict({'lang_weights': {'en': float('inf')}})
    with pytest.raises(ConfigError, match=r"seed: must be >= 0, got -1"): TokenizerConfig.from_dict({'seed': -1})
    assert TokenizerConfig.preset('compass-v2').vocab_size == 180_000

def test_bad_training_input():
    with pytest.raises(DataError, match='texts: no training text'): train_bpe([], 1000)
    with pytest.raises(DataError, match='texts: no training text'): train_bpe(["", " \n"], 1000)
    with pytest.raises(ConfigError, match=f'vocab_size: must be at least {MIN_VOCAB}'): train_bpe(TEXTS, 100)
    cfg = TokenizerConfig.preset('tiny')
    with pytest.raises(DataError, match="groups.general: no training text"): train_tokenizer(cfg, [{'text': 'x', 'lang': 'zh-Hant'}])  # only in 'other': general has none

def test_group_texts_excludes_and_weights():
    rows = [{'text': f"doc {i}", 'lang': 'en'} for i in range(20)] + [{'text': "a\nEVAL", 'lang': 'en'}]
    tx, taken = group_texts(rows, ['en'], 10**6, exclude={'EVAL'})
    assert len(tx) == 20 and all('EVAL' not in t for t in tx)
    tx2, taken2 = group_texts(rows, ['en'], 10**6, weights={'en': 2.5}, exclude={'EVAL'})
    assert len(tx2) == 50 and taken2['en'] == pytest.approx(2.5 * taken['en'], rel=0.1)

def _write_data_dir(root:Path):
    for lang in LANGS:
        (root/'corpus'/lang).mkdir(parents=True)
        recs = [r for r in SYN if r['lang'] == lang]
        (root/'corpus'/lang/'syn.jsonl').write_text("\n".join(json.dumps({k: r[k] for k in ('id', 'text', 'lang', 'domain', 'source')}) for r in recs))
    (root/'eval'/'bpb').mkdir(parents=True)
    for lang in ['en', 'th', 'zh']:
        recs = [r for r in synthetic_corpus(5, langs=[lang], seed=99)]
        (root/'eval'/'bpb'/f'ntrex.{lang}.jsonl').write_text("\n".join(json.dumps({'id': str(i), 'lang': lang, 'text': r['text']}) for i, r in enumerate(recs)))

def test_stages(tmp_path):
    _write_data_dir(tmp_path/'data')
    from compass_nbdev import data
    data.run(data.DataConfig(num_proc=1), tmp_path/'run', tmp_path/'data')
    rep = tkmod.run(TokenizerConfig.preset('tiny', bytes_per_lang=20_000), tmp_path/'run', tmp_path/'data', show_progress=False)
    names = {p.name for p in (tmp_path/'run'/'tokenizer').iterdir()}
    assert {'tokenizer.json', 'tokenizer_config.json', 'train_report.json'} <= names
    assert rep['train_s'] > 0 and rep['peak_rss_mb'] > 0
    assert set(json.loads((tmp_path/'run'/'eval'/'tokenizer_eval.json').read_text())['results']['merged']) == {'en', 'th', 'zh'}
    with pytest.raises(DataError, match='run the data stage first'): tkmod.run('tiny', tmp_path/'empty_run', tmp_path/'data')
    with pytest.raises(CompassError, match="data_dir: data directory .* does not exist"): tkmod.run('tiny', tmp_path/'run', tmp_path/'nowhere')
    out = eval_tokenizer_stage(tmp_path/'run'/'tokenizer', tmp_path/'data', tmp_path/'run'/'eval'/'tokenizer.json', peers=[])
    assert set(out['results']['merged']) == {'en', 'th', 'zh'}
    assert out['results']['merged']['en']['bytes_per_token'] > 1
    assert (tmp_path/'run'/'eval'/'tokenizer.png').stat().st_size > 1000
    with pytest.raises(CompassError, match='data_dir'): eval_tokenizer_stage(tmp_path/'run'/'tokenizer', tmp_path/'nowhere', tmp_path/'x.json', peers=[])

def test_headline():
    langs = ['th', 'vi', 'id', 'ms', 'tl', 'pt', 'en', 'zh']
    r = lambda v, zh=None, pt=None: {l: {'bytes_per_token': {'zh': zh, 'pt': pt}.get(l) or v} for l in langs}
    h = headline({'merged': r(6.0, pt=3.0), 'qwen': r(4.0, zh=6.5), 'tekken': r(5.0, pt=4.0)})
    assert h['sea_best_peer'] == 'tekken' and h['sea_ratio'] == pytest.approx((5 * 6.0 + 3.0) / (5 * 5.0 + 4.0))  # pt counts
    assert h['zh_best_peer'] == 'qwen' and h['en_zh_ratio'] == pytest.approx(6.0 / 6.5)
    assert h['pt_ratio'] == pytest.approx(3.0 / 4.0)  # Portuguese against Tekken
    assert 'pt_ratio' not in headline({'merged': r(6.0), 'qwen': r(4.0)})  # no Tekken, no pt target

def test_pt_in_general():
    "Portuguese is in the general sub-tokenizer with zh, en and the SEA languages, as in the report; not in 'other'."
    g = TokenizerConfig().groups
    assert 'pt' in g['general'] and 'pt' not in g['other'] and set(GENERAL) == set(g['general'])
    assert TokenizerConfig.preset('compass-v2').sizes['general'] >= 150_000

@pytest.mark.skipif(importlib.util.find_spec('tiktoken') is None or importlib.util.find_spec('dashscope') is None,
                    reason='peers extra not installed')
def test_peers_offline():
    peers = load_peers(['qwen'])
    assert peers['qwen'](["Hello world"]) == 2
    with pytest.raises(ConfigError, match='allowed: qwen'): load_peers(['llama'])


# Character coverage: every character of a named set becomes one token, right after the base tokenizer.
def test_char_sets():
    assert [len(char_set(n)) for n in CHAR_SETS] == [3755, 3008, 5401]
    assert len(set(char_set('gb2312-1'))) == 3755 and '的' in char_set('gb2312-1') and '們' in char_set('big5-1')
    with pytest.raises(ConfigError, match="char_sets: unknown character set 'gbk'"): char_set('gbk')
    with pytest.raises(ConfigError) as e: TokenizerConfig.from_dict({'char_sets': ['gb2312-1', 'utf8']})
    assert e.value.where == 'char_sets' and "item 1: 'utf8' is not allowed; choose one of 'gb2312-1', 'gb2312-2', 'big5-1'" in str(e.value)
    assert TokenizerConfig.preset('compass-v2').char_sets == ['gb2312-1']

@pytest.fixture(scope='module')
def covered():
    gen, zh = train_bpe(TEXTS, 700), train_bpe([r['text'] for r in SYN if r['lang'] == 'zh'] * 3, 500)
    chars = char_set('gb2312-1')[:300] + char_set('big5-1')[:100]
    merged, stats = merge_bpe({'general': gen, 'zh': zh}, 2000, chars=chars)
    return gen, merged, stats, chars

def test_merge_covers_chars(covered):
    gen, merged, stats, chars = covered
    assert all(len(merged.encode(c, add_special_tokens=False).ids) == 1 for c in chars)
    assert stats['chars']['added'] >= len(chars) - stats['chars']['present'] and stats['zh']['added'] > 0
    assert merged.get_vocab_size() <= 2000
    v = merged.get_vocab(); assert sorted(v.values()) == list(range(len(v)))
    few, st2 = merge_bpe({'general': gen}, 800, chars=chars)  # the cap wins over coverage
    assert 797 <= few.get_vocab_size() <= 800 and st2['chars']['added'] == few.get_vocab_size() - gen.get_vocab_size()

@FAST
@given(s=mixed)
def test_covered_merge_never_worse_and_matches_reference(covered, s):
    gen, merged, _, _ = covered
    gen, merged = Tokenizer.from_str(gen.to_str()), Tokenizer.from_str(merged.to_str())
    gen.encode_special_tokens = merged.encode_special_tokens = True
    assert len(merged.encode(s, add_special_tokens=False).ids) <= len(gen.encode(s, add_special_tokens=False).ids)
    assert merged.decode(merged.encode(s, add_special_tokens=False).ids) == s
    ranks = {m: i for i, m in enumerate(bpe_parts(merged)[1])}
    for chunk, _ in merged.pre_tokenizer.pre_tokenize_str(s):
        assert apply_merges(chunk, ranks) == [t.value for t in merged.model.tokenize(chunk)]

def test_max_token_length_is_inclusive_bytes():
    for n in (4, 6):
        tok = train_bpe(TEXTS, 800, max_token_length=n)
        assert max(len(t) for t in tok.get_vocab() if t not in SPECIAL_TOKENS) == n  # byte-level: one char per byte

# Chat template (helper H9's asset, compass_nbdev/assets/chat_template.jinja) embedded by to_hf/save_tokenizer.
TINY_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"

def test_save_embeds_chat_template(trained, tmp_path, monkeypatch):
    "The wiring, whether or not the asset exists: whatever the package ships ends up in the saved folder."
    from transformers import AutoTokenizer
    monkeypatch.setattr(tkmod, '_packaged_chat_template', lambda: TINY_TEMPLATE)
    tok = to_hf(trained.subs['general'])
    assert tok.chat_template == TINY_TEMPLATE
    tok.chat_template = None  # save_tokenizer adds it too
    at = AutoTokenizer.from_pretrained(save_tokenizer(tok, tmp_path/'tok'))
    assert at.chat_template == TINY_TEMPLATE
    msgs = [{'role': 'user', 'content': 'hi <think>'}]
    text = at.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\nhi <think><|im_end|>\n"
    assert not set(at(text)['input_ids']) & set(range(len(SPECIAL_TOKENS)))  # plain text stays plain
    assert at(text, split_special_tokens=False)['input_ids'].count(3) == 1
    monkeypatch.setattr(tkmod, '_packaged_chat_template', lambda: None)
    bare = save_tokenizer(to_hf(trained.subs['general']), tmp_path/'bare')
    assert AutoTokenizer.from_pretrained(bare).chat_template is None

@pytest.mark.skipif(_packaged_chat_template() is None, reason='compass_nbdev/assets/chat_template.jinja not present')
def test_shipped_chat_template(hf, tmp_path):
    from transformers import AutoTokenizer
    at = AutoTokenizer.from_pretrained(save_tokenizer(hf, tmp_path/'tok'))
    assert at.chat_template == _packaged_chat_template()
    msgs = [{'role': 'user', 'content': 'Xin chào <think>'}]
    on, off = (at.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=e) for e in (True, False))
    assert 'Xin chào <think>' in on and '<|im_start|>' in on and on != off
    ids = at.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=False, return_dict=False,
                                 tokenizer_kwargs={'split_special_tokens': False})
    assert 3 in ids and 4 in ids and at.decode(ids) == off
