"Tests for compass_nbdev.evaluate: bits per byte, the task harness, bad task specs, probes, routing, report, lm-eval agreement."
import ast, json, math, os
import numpy as np, pytest, torch, yaml
from compass_nbdev.core import DataError, ConfigError, CompassError
from compass_nbdev.evaluate import (prefix_token_id, token_nll, text_nll, bits_per_byte, encode_pair, loglikelihoods,
                                    TaskSpec, load_spec, load_task, evaluate_task, builtin_tasks, lm_eval_task_yaml,
                                    mutual_information, routing_counts, mean_features, EvalConfig, run, report,
                                    wilson_interval, majority_level, offered_tasks, tasks_table)
from compass_nbdev.synthetic import write_synthetic_eval
from compass_nbdev.model import CompassConfig, CompassForCausalLM
from compass_nbdev.tokenizer import train_bpe, to_hf

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Saya suka membeli baju di toko online.",
         "ร้านนี้ส่งของเร็วมาก สินค้าดี", "Sản phẩm rất tốt, giao hàng nhanh.", "这个商品质量很好，物流也很快。",
         "Ang ganda ng produkto, mabilis ang delivery.", "Produto excelente, chegou antes do prazo."] * 6
DATA = os.environ.get('COMPASS_DATA_DIR')  # the shared data directory; the tests that need it skip without it

@pytest.fixture(scope='module')
def tok(): return to_hf(train_bpe(TEXTS, 300, min_frequency=2))

@pytest.fixture(scope='module')
def model(tok):
    torch.manual_seed(0)
    return CompassForCausalLM(CompassConfig.from_preset('tiny', vocab_size=len(tok))).eval()

ITEMS = [dict(id=f'q{i}', passage=p, question=q, choices=c, label=l) for i, (p, q, c, l) in enumerate([
    ("The fox is brown.", "What colour is the fox?", ["brown", "blue", "green", "red"], 0),
    ("Saya suka baju.", "Apa yang saya suka?", ["mobil", "baju", "buku", "makan"], 1),
    ("สินค้าดี ส่งเร็ว", "ส่งของเป็นอย่างไร", ["ช้า", "ไม่ส่ง", "เร็ว", "หาย"], 2),
    ("Giao hàng nhanh.", "Giao hàng thế nào?", ["chậm", "nhanh", "không", "mất"], 1),
    ("物流很快。", "物流怎么样？", ["很快", "很慢", "没有", "丢了"], 0),
    ("Chegou antes do prazo.", "Quando chegou?", ["depois", "nunca", "antes do prazo", "ontem"], 2)])]

@pytest.fixture
def taskfile(tmp_path):
    p = tmp_path/'mc.jsonl'; p.write_text(''.join(json.dumps(d, ensure_ascii=False) + '\n' for d in ITEMS), encoding='utf-8')
    return p

def spec(path, **kw):
    return dict(name='toy_mc', path=str(path), template="Passage: {passage}\nQuestion: {question}\nAnswer:", choices='choices',
                gold='label', **kw)

def test_token_nll_padding_invariant(model, tok):
    a = tok(TEXTS[0])['input_ids']; b = tok(TEXTS[4])['input_ids']
    one = token_nll(model, [a])[0]; both = token_nll(model, [b, a], batch_size=2)
    np.testing.assert_allclose(one, both[1], atol=1e-5)

def test_bpb_counts_every_token_and_byte(model, tok):
    tx = TEXTS[:7]
    pre = prefix_token_id(tok)
    manual = sum(token_nll(model, [[pre] + tok(t, add_special_tokens=False)['input_ids']])[0].sum() for t in tx)
    r = bits_per_byte(model, tok, texts={'mix': tx}, n_boot=200)['langs']['mix']
    assert r['bytes'] == sum(len(t.encode()) for t in tx)
    assert math.isclose(r['bpb'], manual / (math.log(2) * r['bytes']), rel_tol=1e-5)
    assert r['ci95'][0] <= r['bpb'] <= r['ci95'][1]
    # an untrained model pays about log2(V) bits per token
    assert 0.5 * math.log2(len(tok)) < r['bpb'] * r['bytes_per_token'] < 2 * math.log2(len(tok))

def test_bpb_windows_long_text(model, tok):
    long = ' '.join(TEXTS[:7] * 8)
    n_tok = len(tok(long, add_special_tokens=False)['input_ids'])
    assert n_tok > model.config.max_position_embeddings
    nll = text_nll(model, tok, [long])
    assert np.isfinite(nll).all() and nll[0] > 0

def test_encode_pair_joint(tok):
    ctx, cont = encode_pair(tok, "Answer: ", "brown")
    assert tok.decode(ctx + cont) == "Answer: brown" and tok.decode(cont).startswith(' ')

def test_task_scores_and_acc(model, tok, taskfile):
    t = load_task(spec(taskfile))
    assert t.gold == [0, 1, 2, 1, 0, 2]
    r = evaluate_task(model, tok, t, details=True)
    lls = r['loglikelihoods']
    acc = np.mean([int(np.argmax(l)) == g for l, g in zip(lls, t.gold)])
    assert r['acc'] == acc and r['n'] == 6 and math.isclose(r['chance'], 0.25)
    # each per-choice score is the log-likelihood of " " + choice after the prompt
    ll = loglikelihoods(model, tok, [(t.prompts[0], ' ' + t.choices[0][0])])[0]
    assert math.isclose(ll, lls[0][0], rel_tol=1e-6, abs_tol=1e-6)

def test_fewshot_prefix(model, tok, taskfile):
    t = load_task(spec(taskfile), limit=2, num_fewshot=2)
    assert t.fewshot.count('Answer:') == 2
    for it in t.items: assert it['question'] not in t.fewshot   # evaluated items are never shots
    ids = [it['id'] for it in load_task(spec(taskfile), limit=3).items]
    assert len(ids) == 3 and ids == sorted(ids)   # a seeded sample, in file order
    assert evaluate_task(model, tok, t)['num_fewshot'] == 2

@pytest.mark.parametrize('bad,needle', [
    (dict(template="{passage} {answer}"), "unknown field 'answer'"),
    (dict(choices='options'), "'options'"),
    (dict(gold='gold'), "'gold'"),
])
def test_bad_items_name_spec_item_field(taskfile, bad, needle):
    with pytest.raises(DataError) as e: load_task({**spec(taskfile), **bad})
    msg = str(e.value)
    assert needle in msg and 'toy_mc' in msg and 'item q0' in msg and 'mc.jsonl:1' in msg

def test_gold_outside_choices(tmp_path):
    p = tmp_path/'g.jsonl'; p.write_text(json.dumps(dict(id='x1', passage='a', question='b', choices=['c', 'd'], label=3)) + '\n')
    with pytest.raises(DataError, match=r"toy_mc.*item x1.*'label'.*outside"): load_task(spec(p))
    p.write_text(json.dumps(dict(id='x2', passage='a', question='b', choices=['c', 'd'], label='e')) + '\n')
    with pytest.raises(DataError, match=r"item x2.*not one of the choices"): load_task(spec(p))
    with pytest.raises(DataError, match="not in gold_map"): load_task({**spec(p), 'gold_map': {'c': 0}})

def test_empty_file_and_missing_spec_field(tmp_path):
    p = tmp_path/'e.jsonl'; p.write_text('')
    with pytest.raises(DataError, match="toy_mc.*no items"): load_task(spec(p))
    f = tmp_path/'s.yaml'; f.write_text(yaml.safe_dump({k: v for k, v in spec(p).items() if k != 'template'}))
    with pytest.raises(ConfigError, match=r"s\.yaml.*template"): load_spec(f)
    f.write_text(yaml.safe_dump({**spec(p), 'colour': 'red'}))
    with pytest.raises(ConfigError, match="colour"): load_spec(f)

def test_builtin_specs():
    names = builtin_tasks()
    assert sum(n.startswith('belebele_') for n in names) == 8
    assert {'xnli_th', 'xnli_vi', 'xnli_tl', 'indonli_id'} <= set(names)
    assert sum(load_spec(n).group == 'sentiment' for n in names) == 5
    assert load_spec('belebele_th').template.startswith('ข้อความ')

@pytest.mark.skipif(DATA is None, reason='needs the shared data directory')
def test_builtin_tasks_load_real_items():
    assert len(offered_tasks(DATA)) >= 17
    for n in offered_tasks(DATA):
        t = load_task(n, data_dir=DATA, limit=3)
        assert len(t.gold) == 3 and all(0 <= g < len(c) for g, c in zip(t.gold, t.choices))

def test_mutual_information():
    assert math.isclose(mutual_information(np.array([[3., 3], [3, 3]])), 0, abs_tol=1e-12)
    assert math.isclose(mutual_information(np.array([[4., 0, 0], [0, 4, 0], [0, 0, 4]])), math.log2(3))

def test_routing_counts(model, tok):
    rc = routing_counts(model, tok, {'a': TEXTS[:3], 'b': TEXTS[3:6]})
    n_moe = sum(model.config.is_moe_layer(i) for i in range(model.config.num_hidden_layers))
    assert rc['counts'].shape == (n_moe, 2, model.config.n_routed_experts)
    ntok = [sum(len(tok(t, add_special_tokens=False)['input_ids']) for t in g) for g in (TEXTS[:3], TEXTS[3:6])]
    np.testing.assert_array_equal(rc['tokens'], ntok)
    assert (rc['counts'].sum(-1) == np.array(ntok)[None] * model.config.num_experts_per_tok).all()
    assert (rc['shared_norm'] > 0).all() and (rc['routed_norm'] > 0).all()

def test_mean_features_shape(model, tok):
    f = mean_features(model, tok, TEXTS[:5], batch_size=2)
    g = mean_features(model, tok, TEXTS[:5], batch_size=5)
    assert f.shape == (5, model.config.hidden_size)
    np.testing.assert_allclose(f, g, atol=1e-5)

@pytest.mark.skipif(DATA is None, reason='needs the shared data directory')
def test_eval_run_writes_results_and_report(model, tok, tmp_path):
    run_dir = tmp_path/'run'
    model.save_pretrained(run_dir/'model'); tok.save_pretrained(run_dir/'model')
    import importlib.util
    sk = importlib.util.find_spec('sklearn') is not None
    cfg = EvalConfig(tasks=['sentiment_smsa_id'], bpb_limit=3, task_limit=3, routing_n=3, probe=sk, probe_train=12, batch_size=8)
    out = run(cfg, run_dir, DATA)
    for f in ('bpb.json', 'tasks.json', 'routing.json') + (('probes.json',) if sk else ()): assert f in out['written']
    bpb = json.loads((run_dir/'eval'/'bpb.json').read_text())
    assert set(bpb['langs']) >= {'en', 'th', 'zh'} and all(r['n'] == 3 for r in bpb['langs'].values())
    assert math.isclose(out['mean_bpb'], bpb['mean_bpb'])
    md = (run_dir/'report.md').read_text()
    assert out['report'] == str(run_dir/'report.md')
    for h in ('Bits per byte', 'Tasks', 'Routing') + (('Linear probes',) if sk else ()): assert h in md
    assert '| lang | bpb | ci_low |' in md  # tables come from core.md_table
    assert (run_dir/'report_bpb.png').is_file() and (run_dir/'report_routing_by_lang.png').is_file()
    (run_dir/'report.md').unlink()
    assert report(run_dir).read_text() == md   # `compass report` alone rewrites the same report

def test_eval_run_without_data_writes_only_the_report(tmp_path):
    out = run(EvalConfig(), tmp_path/'r', 'synthetic')
    assert out == {'skipped': f"no model in {tmp_path/'r'/'model'}", 'report': str(tmp_path/'r'/'report.md')}
    assert 'Nothing to report yet' in (tmp_path/'r'/'report.md').read_text()

def test_eval_config_one_set_of_defaults_and_checked_ranges():
    import inspect
    from compass_nbdev.evaluate import evaluate_model
    assert 'bpb_limit' not in inspect.signature(evaluate_model).parameters   # the function takes the config, no defaults of its own
    c = EvalConfig()
    assert (c.bpb_limit, c.task_limit, c.routing_n, c.probe_train) == (200, 50, 50, 500)
    for k, v, msg in [('routing_n', 0, 'must be >= 1, got 0'), ('task_limit', -1, 'must be >= 1'), ('num_fewshot', -2, 'must be >= 0'),
                      ('batch_size', 0, 'must be >= 1')]:
        with pytest.raises(ConfigError, match=f"eval.{k}: {msg}"): EvalConfig.from_dict({k: v}, 'eval')

def test_bpb_is_train_nll_sums(model, tok):
    "Evaluation and training validation share one scoring primitive (train.nll_sums): same numbers for the same prefix."
    from compass_nbdev.train import nll_sums
    from compass_nbdev.evaluate import _max_len
    nats, nb = nll_sums(model, tok, TEXTS[:7], _max_len(model) - 1, 4, prefix_token_id(tok))
    r = bits_per_byte(model, tok, texts={'mix': TEXTS[:7]}, n_boot=50)['langs']['mix']
    assert math.isclose(r['bpb'], nats.sum() / (math.log(2) * nb.sum()), rel_tol=1e-6)
    np.testing.assert_allclose(text_nll(model, tok, TEXTS[:7]), nats, rtol=1e-5)

def test_lm_eval_agreement(model, tok, taskfile, tmp_path, monkeypatch):
    "Per-choice log-likelihoods agree with lm-evaluation-harness (HF backend) within 1e-5; accuracies are equal."
    pytest.importorskip('lm_eval')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    mdir = tmp_path/'model'; model.save_pretrained(mdir); tok.save_pretrained(mdir)
    sp = spec(taskfile)
    tdir = tmp_path/'tasks'; tdir.mkdir()
    (tdir/'toy_mc.yaml').write_text(yaml.safe_dump(lm_eval_task_yaml(sp), allow_unicode=True), encoding='utf-8')
    out = simple_evaluate(model='hf', model_args=dict(pretrained=str(mdir), dtype='float32', device='cpu'),
                          tasks=['toy_mc'], task_manager=TaskManager(include_path=str(tdir)), log_samples=True,
                          batch_size=1)
    ref = {s['doc_id']: [r[0][0] for r in s['resps']] for s in out['samples']['toy_mc']}
    ours = evaluate_task(model, tok, sp, details=True, batch_size=1)
    print('max |diff|', max(abs(a - b) for i, l in enumerate(ours['loglikelihoods']) for a, b in zip(l, ref[i])))
    for i, lls in enumerate(ours['loglikelihoods']):
        np.testing.assert_allclose(lls, ref[i], atol=1e-5, rtol=0)
    batched = evaluate_task(model, tok, sp, details=True, batch_size=16)   # padded batches: float32 rounding only
    print('batched max |diff|', max(abs(a - b) for i, l in enumerate(batched['loglikelihoods']) for a, b in zip(l, ref[i])))
    for i, lls in enumerate(batched['loglikelihoods']): np.testing.assert_allclose(lls, ref[i], atol=1e-4, rtol=0)
    assert ours['acc'] == out['results']['toy_mc']['acc,none']
    assert ours['acc_norm'] == out['results']['toy_mc']['acc_norm,none']

@pytest.mark.skipif(DATA is None, reason='needs the shared data directory')
def test_lm_eval_yaml_renders_like_ours(tmp_path):
    "The lm-eval translation of every built-in spec gives the same prompts and gold indices (lm-eval's own Jinja)."
    pytest.importorskip('lm_eval')
    from lm_eval.utils import apply_template
    syn = write_synthetic_eval(tmp_path, n_per_lang=3)
    for d, n in [(d, n) for d in ([DATA] if DATA else []) + [syn] for n in offered_tasks(d)]:
        y, t = lm_eval_task_yaml(n, d), load_task(n, d, limit=3)
        for it, g, p, ch in zip(t.items, t.gold, t.prompts, t.choices):
            assert apply_template(y['doc_to_text'], it) == p
            tg = y['doc_to_target']
            assert int(apply_template(tg, it) if '{{' in tg else it[tg]) == g
            assert (ast.literal_eval(apply_template(y['doc_to_choice'], it)) if isinstance(y['doc_to_choice'], str) else y['doc_to_choice']) == ch

def _bench_mvd():
    import importlib.util, pathlib
    p = pathlib.Path(__file__).parent.parent/'bench'/'moe_vs_dense.py'
    s = importlib.util.spec_from_file_location('moe_vs_dense', p); m = importlib.util.module_from_spec(s); s.loader.exec_module(m)
    return m

@pytest.mark.parametrize('ov', [{}, dict(aux_loss_alpha=1e-3, first_k_dense=1), dict(n_routed_experts=32, moe_intermediate_size=64, num_experts_per_tok=8, n_shared_experts=4),
                                dict(first_k_dense=0, n_shared_experts=1, num_experts_per_tok=5)])
def test_moe_vs_dense_twin_matches_active_params(ov):
    "The bench's dense twin has the MoE's active parameters exactly, router weights aside, and fewer in total."
    from compass_nbdev.model import model_stats
    b = _bench_mvd()
    moe = CompassConfig.from_preset('laptop', **ov)
    dense = CompassConfig.from_preset('laptop-dense', **b.dense_twin_overrides('laptop', ov))
    sm, sd = model_stats(moe), model_stats(dense)
    n_moe_layers = sum(moe.is_moe_layer(i) for i in range(moe.num_hidden_layers))
    assert n_moe_layers > 0 and dense.n_routed_experts == 0
    test_router = moe.hidden_size * moe.n_routed_experts * n_moe_layers
    assert sm['active'] - test_router == sd['active']
    assert sm['total'] > sd['total']
    for k in ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size', 'tie_word_embeddings'):
        assert getattr(moe, k) == getattr(dense, k), k

def test_wilson_interval_and_majority():
    for k, n in [(0, 10), (3, 10), (8, 10), (10, 10), (40, 200)]:
        lo, hi = wilson_interval(k, n)
        assert 0 <= lo <= k / n <= hi <= 1 and hi - lo > 0
    np.testing.assert_allclose(wilson_interval(8, 10), (0.4902, 0.9433), atol=1e-4)   # the textbook value
    lo1, hi1 = wilson_interval(30, 100); lo2, hi2 = wilson_interval(300, 1000)
    assert hi2 - lo2 < hi1 - lo1                                        # more items, a narrower interval
    assert wilson_interval(5, 10, z=1.0)[1] < wilson_interval(5, 10)[1]   # a lower confidence, a narrower interval
    assert majority_level([4, 4, 4, 1]) == 0.75 and majority_level([0, 1, 2, 3]) == 0.25 and math.isnan(majority_level([]))

def test_task_results_carry_interval_and_majority(model, tok, taskfile):
    r = evaluate_task(model, tok, spec(taskfile))
    assert r['majority'] == majority_level([d['label'] for d in ITEMS])
    assert r['acc_ci95'][0] <= r['acc'] <= r['acc_ci95'][1]
    assert list(tasks_table([r]).columns[-2:]) == ['chance', 'majority']

def test_offered_tasks_follow_the_data_directory(tmp_path):
    d = write_synthetic_eval(tmp_path, n_per_lang=2)
    assert offered_tasks(d) == builtin_tasks('synthetic_category') + builtin_tasks('synthetic_rating')
    assert len(offered_tasks(d)) == 18 and offered_tasks('synthetic') == []
    if DATA: assert 'belebele_th' in offered_tasks(DATA) and not any(t.startswith('synthetic') for t in offered_tasks(DATA))

def test_synthetic_eval_run_writes_the_evaluation_section(model, tok, tmp_path):
    "Without a data directory the stage scores the synthetic tasks and held-out text; the report shows them with chance levels."
    rd = tmp_path/'run'
    model.save_pretrained(rd/'model'); tok.save_pretrained(rd/'model')
    cfg = EvalConfig(tasks=['belebele_th'], bpb_limit=3, task_limit=3, routing_n=3, synthetic_n=3, gen_tokens=3, probe=False, batch_size=8)
    out = run(cfg, rd, 'synthetic')
    assert out['written'] == ['bpb.json', 'generations.json', 'routing.json', 'tasks.json']
    tres = json.loads((rd/'eval'/'tasks.json').read_text())
    assert len(tres) == 18 and {r['group'] for r in tres} == {'synthetic_rating', 'synthetic_category'}
    assert {(r['group'], round(r['chance'], 9)) for r in tres} == {('synthetic_rating', 0.2), ('synthetic_category', 0.25)}
    bpb = json.loads((rd/'eval'/'bpb.json').read_text())
    assert bpb['source'] == 'synthetic held-out' and len(bpb['langs']) == 9
    gen = json.loads((rd/'eval'/'generations.json').read_text())
    assert len(gen) == 9 and all(len(v) == 3 for v in gen.values())
    md = (rd/'report.md').read_text()
    for h in ('## Bits per byte (synthetic held-out)', '## Tasks', '| chance | majority |', 'synthetic_rating_th', '## Routing',
              'Mutual information', '## Generations'): assert h in md, h


def test_synthetic_eval_run_with_probes_uses_only_the_offered_tasks(model, tok, tmp_path):
    "With probes on (the laptop preset's default) and no data directory, probes are fitted only for tasks the synthetic data offers."
    rd = tmp_path/'run'
    model.save_pretrained(rd/'model'); tok.save_pretrained(rd/'model')
    cfg = EvalConfig(bpb_limit=3, task_limit=3, routing=False, synthetic_n=3, gen_tokens=0, probe=True, probe_train=4, batch_size=8)
    out = run(cfg, rd, 'synthetic')
    assert 'probes.json' in out['written'] and 'tasks.json' in out['written']
    probes = json.loads((rd/'eval'/'probes.json').read_text())
    assert all(p['task'].startswith('synthetic_') for p in probes), [p['task'] for p in probes]
