"CompassForCausalLM: config validation, accounting, save/load, remote code, cache, generation, pipeline, balance."
import json, math, os, subprocess, sys, pytest, torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PreTrainedTokenizerFast, pipeline
from compass_nbdev.core import ConfigError
from compass_nbdev.model import CompassConfig, CompassForCausalLM, MODEL_PRESETS, model_stats
from compass_nbdev.balance import load_stats

@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return CompassForCausalLM(CompassConfig.from_preset('tiny')).eval()

@pytest.mark.parametrize('kw,key', [
    (dict(num_experts_per_tok=9), 'num_experts_per_tok'), (dict(num_key_value_heads=3), 'num_key_value_heads'),
    (dict(balance='magic'), 'balance'), (dict(balance_scope='x'), 'balance_scope'), (dict(moe_impl='cuda'), 'moe_impl'),
    (dict(first_k_dense=9), 'first_k_dense'), (dict(hidden_size=-1), 'hidden_size'), (dict(head_dim=15), 'head_dim'),
    (dict(capacity_factor=0.), 'capacity_factor'), (dict(aux_loss_alpha=-1.), 'aux_loss_alpha')])
def test_bad_configs_name_the_key(kw, key):
    with pytest.raises(ConfigError) as e: CompassConfig.from_preset('tiny', **kw)
    assert str(e.value).startswith(f"{key}:"), str(e.value)

def test_unknown_preset_lists_allowed():
    with pytest.raises(ConfigError, match="preset: unknown preset 'big'; choose one of tiny, laptop, gpu-small, compass-v2"):
        CompassConfig.from_preset('big')

def test_bad_config_fails_before_allocation(monkeypatch):
    called = []
    monkeypatch.setattr(torch.nn.Linear, '__init__', lambda *a, **k: called.append(1))
    with pytest.raises(ConfigError): CompassForCausalLM(CompassConfig.from_preset('tiny', num_key_value_heads=3))
    assert not called

@pytest.mark.parametrize('name', list(MODEL_PRESETS))
def test_accounting_matches_built_model(name):
    cfg = CompassConfig.from_preset(name)
    with torch.device('meta'): m = CompassForCausalLM(cfg)
    assert sum(p.numel() for p in m.parameters()) == model_stats(cfg)['total']

def test_compass_v2_scale_and_dense_counterparts():
    s = model_stats(CompassConfig.from_preset('compass-v2'))
    assert abs(s['total'] / 30e9 - 1) < 0.03 and abs(s['active'] / 5e9 - 1) < 0.03
    c = CompassConfig.from_preset('compass-v2')
    assert (c.n_shared_experts, c.num_experts_per_tok, c.vocab_size) == (2, 4, 180_000)
    for n in ('tiny', 'laptop', 'gpu-small', 'compass-v2'):
        a, d = model_stats(CompassConfig.from_preset(n))['active'], model_stats(CompassConfig.from_preset(n + '-dense'))['active']
        assert abs(d / a - 1) < 0.01, n
    assert 1e6 < model_stats(CompassConfig.from_preset('laptop'))['total'] < 1e7
    assert 1e8 < model_stats(CompassConfig.from_preset('gpu-small'))['total'] < 1e9

def test_loss_composition_and_load(tiny):
    x = torch.randint(0, 512, (2, 9))
    tiny.train()
    out = tiny(x, labels=x)
    tiny.eval()
    c = tiny.config
    torch.testing.assert_close(out.loss, out.lm_loss + c.aux_loss_alpha * out.aux_loss + c.z_loss_beta * out.z_loss)
    assert out.expert_load.shape == (3, 8) and (out.expert_load.sum(1) == 2 * 9 * 2).all()
    assert out.aux_loss >= 1 - 1e-5                              # E·Σf·P >= 1 only at balance ... and is positive
    out.loss.backward()
    assert tiny.moe_layers()[0].router.weight.grad.abs().sum() > 0
    tiny.zero_grad()

def test_save_load_identical_logits(tiny, tmp_path):
    x = torch.randint(0, 512, (2, 10))
    tiny.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / 'config.json').read_text())
    assert cfg['model_type'] == 'compass' and cfg['auto_map']['AutoModelForCausalLM'] == 'model.CompassForCausalLM'
    assert {'model.safetensors', 'model.py', 'moe.py', 'balance.py', 'core.py'} <= set(os.listdir(tmp_path))
    assert type(AutoConfig.from_pretrained(tmp_path)) is CompassConfig
    re = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad(): assert torch.equal(re(x).logits, tiny(x).logits)

def test_trust_remote_code_without_package(tiny, tmp_path):
    "A fresh interpreter that never imports compass_nbdev loads the folder from the copied code files."
    tiny.save_pretrained(tmp_path)
    x = torch.randint(0, 512, (1, 6))
    with torch.no_grad(): torch.save(dict(x=x, logits=tiny(x).logits), tmp_path / 'ref.pt')
    code = f"""
import sys, torch
sys.modules['compass_nbdev'] = None          # make the installed package unimportable
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
ref = torch.load({str(tmp_path / 'ref.pt')!r})
assert type(m).__module__.startswith('transformers_modules'), type(m).__module__
with torch.no_grad(): assert torch.equal(m(ref['x']).logits, ref['logits'])
print('ok')
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and 'ok' in r.stdout, r.stderr[-3000:]

def test_incremental_cache_equals_full(tiny):
    x = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        full = tiny(x).logits
        cache = DynamicCache()
        a = tiny(x[:, :6], cache=cache, use_cache=True).logits
        b = [tiny(x[:, i:i+1], cache=cache, use_cache=True).logits for i in range(6, 11)]
    torch.testing.assert_close(torch.cat([a] + b, 1), full, atol=1e-5, rtol=1e-4)

def test_generation_reproducible_and_padding(tiny):
    x = torch.randint(1, 512, (1, 5))
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(tiny.generate(x, max_new_tokens=8, do_sample=True, top_k=20, pad_token_id=0))
    assert torch.equal(*outs) and outs[0].shape == (1, 13)
    greedy = tiny.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    pad = torch.cat([torch.zeros(1, 2, dtype=torch.long), x], 1)
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    greedy_pad = tiny.generate(pad, attention_mask=am, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(greedy[0, 5:], greedy_pad[0, 7:])

def _tokenizer():
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders
    tok = Tokenizer(models.BPE(unk_token='<unk>'))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(['selamat pagi apa kabar', 'สวัสดีครับ', 'xin chào các bạn', 'hello shopee world'] * 10,
                            trainers.BpeTrainer(vocab_size=400, special_tokens=['<pad>', '<unk>', '<eos>'],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>', unk_token='<unk>', eos_token='<eos>')

def test_pipeline_text_generation(tiny):
    tok = _tokenizer()
    assert len(tok) <= tiny.config.vocab_size
    gen = pipeline('text-generation', model=tiny, tokenizer=tok, device='cpu')
    out = gen('selamat pagi', max_new_tokens=5, do_sample=False)
    assert out[0]['generated_text'].startswith('selamat pagi')

def test_aux_free_bias_moves_and_global_scope():
    torch.manual_seed(0)
    m = CompassForCausalLM(CompassConfig.from_preset('tiny', balance='aux_free', bias_update_rate=0.1))
    x = torch.randint(0, 512, (2, 16))
    out = m(x, labels=x)
    assert out.loss.item() == pytest.approx((out.lm_loss + 1e-3 * out.z_loss).item())   # no aux term
    m.balance_step()
    b = m.moe_layers()[0].balance_bias
    load = out.expert_load[0].float()
    torch.testing.assert_close(b, 0.1 * torch.sign(load.mean() - load))
    g = CompassForCausalLM(CompassConfig.from_preset('tiny', balance_scope='global'))
    g.load_state_dict({k: v for k, v in m.state_dict().items() if 'balance_bias' not in k}, strict=False)
    g(x[:1], labels=x[:1]); o2 = g(x[1:], labels=x[1:])
    assert g._global_counts.counts[0].sum() == 2 * 16 * 2        # counts of both micro-batches
    g.balance_step(); assert g._global_counts.counts == {}

def test_moe_impl_switch_keeps_logits(tiny):
    x = torch.randint(0, 512, (1, 7))
    with torch.no_grad():
        ref = tiny(x).logits
        for m in tiny.moe_layers(): m.impl = 'loop'
        alt = tiny(x).logits
        for m in tiny.moe_layers(): m.impl = 'auto'
    torch.testing.assert_close(alt, ref, atol=1e-5, rtol=1e-4)

# --- hand-written backwards of the CPU fast path (issue #4 rerun) ---
import torch.nn.functional as F
from compass_nbdev.model import RMSNorm, apply_rope, rope_cos_sin
from compass_nbdev.fast_cpu import cross_entropy_fused, rope_fused

def test_lm_loss_matches_torch_cross_entropy(tiny):
    x = torch.randint(0, 512, (2, 11)); x[1, 7:] = 0
    labels = x.clone(); labels[1, 7:] = -100                      # padding ignored
    tiny.train()
    out = tiny(x, labels=labels)                                  # training: the fused head + loss, no logits
    assert out.logits is None
    with torch.no_grad(): logits = tiny(x).logits
    shifted = F.pad(labels[:, 1:], (0, 1), value=-100)
    ref = F.cross_entropy(logits.reshape(-1, 512).float(), shifted.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.lm_loss, ref)
    with torch.no_grad(): torch.testing.assert_close(tiny(x, labels=labels).lm_loss, ref)   # unfused path, same value
    tiny.eval()

@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.bfloat16])
def test_cross_entropy_fn_value_and_grad(dtype):
    g = torch.Generator().manual_seed(1)
    lg = (torch.randn(9, 37, generator=g) * 3).to(dtype).requires_grad_()
    tg = torch.randint(0, 37, (9,), generator=g); tg[[2, 5]] = -100
    ours = cross_entropy_fused(lg, tg)
    ref = F.cross_entropy(lg.float(), tg, ignore_index=-100)
    (go,) = torch.autograd.grad(ours * 2.5, lg)
    (gr,) = torch.autograd.grad(ref * 2.5, lg)
    tol = dict(atol=1e-2, rtol=1e-2) if dtype == torch.bfloat16 else {}
    assert go.dtype == dtype and go[[2, 5]].abs().max() == 0
    torch.testing.assert_close(ours.float(), ref.float(), **tol)
    torch.testing.assert_close(go.float(), gr.float(), **tol)

def test_cross_entropy_fn_second_backward_and_all_ignored():
    lg = torch.randn(4, 5, requires_grad=True)
    loss = cross_entropy_fused(lg, torch.tensor([0, 1, 2, 3]))
    loss.backward(retain_graph=True); g1 = lg.grad.clone()
    loss.backward()                                               # retain_graph works: the saved buffer is untouched
    torch.testing.assert_close(lg.grad, 2 * g1)
    assert torch.isnan(cross_entropy_fused(lg, torch.full((4,), -100)))   # like F.cross_entropy: 0/0

@pytest.mark.parametrize('shape', [(3, 5, 16), (2, 7, 3, 8)])
def test_rmsnorm_backward_matches_autograd(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    nrm = RMSNorm(shape[-1]).double(); torch.nn.init.normal_(nrm.weight)
    ours = nrm(x)
    ref = F.rms_norm(x, (shape[-1],), nrm.weight, nrm.eps)
    torch.testing.assert_close(ours, ref)
    go = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (x, nrm.weight), go), torch.autograd.grad(ref, (x, nrm.weight), go)):
        torch.testing.assert_close(a, b)
    with torch.no_grad(): torch.testing.assert_close(nrm(x), ref)   # the inference path (F.rms_norm) agrees

def test_rmsnorm_bf16_and_noncontiguous():
    torch.manual_seed(0)
    base = torch.randn(2, 5, 6, 8)
    x = base[:, :, :4].to(torch.bfloat16).requires_grad_()       # a strided view, as the q/k heads are
    nrm = RMSNorm(8).to(torch.bfloat16)
    y = nrm(x); y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16 and nrm.weight.grad.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.rms_norm(x.detach().float(), (8,), None, nrm.eps), atol=2e-2, rtol=2e-2)

def test_rope_matches_textbook_formula_and_gradcheck():
    torch.manual_seed(0)
    cos, sin = rope_cos_sin(torch.arange(7)[None].expand(2, 7), 12, 1e4, torch.float64)
    x = torch.randn(2, 3, 7, 12, dtype=torch.float64, requires_grad=True)
    x1, x2 = x.chunk(2, -1)
    ref = x * cos + torch.cat([-x2, x1], -1) * sin
    torch.testing.assert_close(apply_rope(x, cos, sin), ref)           # the reference is the formula
    ours = rope_fused(x, cos, sin)
    torch.testing.assert_close(ours, ref)
    go = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x, go)[0], torch.autograd.grad(ref, x, go)[0])
    # with general (unequal-halves) tables too, the backward is the exact transpose
    c2, s2 = torch.randn(1, 1, 7, 12, dtype=torch.float64), torch.randn(1, 1, 7, 12, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: rope_fused(t, c2, s2), (x.detach()[:1, :1].clone().requires_grad_(),))


# --- fused output head + loss, fused QK-norm + RoPE, router + shared experts in one product (issue #4, third pass) ---
from compass_nbdev.model import Attention
from compass_nbdev.fast_cpu import linear_cross_entropy
from compass_nbdev.moe import CompassMoE, swiglu

@pytest.mark.parametrize('dtype,chunk_rows', [(torch.float64, 64), (torch.float32, 64), (torch.float32, 1000)])
def test_linear_cross_entropy_matches_torch(dtype, chunk_rows):
    g = torch.Generator().manual_seed(3)
    h = (torch.randn(150, 24, generator=g) * 2).to(dtype).requires_grad_()
    w = torch.randn(70, 24, generator=g).to(dtype).requires_grad_()
    t = torch.randint(0, 70, (150,), generator=g); t[::5] = -100
    ours = linear_cross_entropy(h, w, t, chunk_bytes=chunk_rows * 70 * 4)     # 64 rows: three chunks, the last short
    ref = F.cross_entropy(F.linear(h, w), t, ignore_index=-100)
    torch.testing.assert_close(ours, ref)
    for a, b in zip(torch.autograd.grad(ours * 2.5, (h, w)), torch.autograd.grad(ref * 2.5, (h, w))):   # g != 1 too
        torch.testing.assert_close(a, b)

def test_linear_cross_entropy_edge_cases():
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    none = linear_cross_entropy(h, w, torch.full((4,), -100))
    assert torch.isnan(none)                                          # 0/0, as F.cross_entropy
    none.backward(); assert (h.grad == 0).all() and (w.grad == 0).all()
    with pytest.raises(ValueError, match=r"h \(4, 8\), weight \(5, 7\)"): linear_cross_entropy(h, torch.randn(5, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target"): linear_cross_entropy(h, w, torch.zeros(3, dtype=torch.long))
    t = torch.randint(0, 5, (4,))
    with torch.no_grad(): torch.testing.assert_close(linear_cross_entropy(h, w, t), F.cross_entropy(F.linear(h, w), t))
    frozen = w.detach()                                               # a frozen head: only the input gradient
    (gh,) = torch.autograd.grad(linear_cross_entropy(h, frozen, t), h)
    torch.testing.assert_close(gh, torch.autograd.grad(F.cross_entropy(F.linear(h, frozen), t), h)[0])
    w0 = torch.randn(5, 8, requires_grad=True)                        # no rows: nan loss, zero gradient
    linear_cross_entropy(torch.randn(0, 8), w0, torch.zeros(0, dtype=torch.long)).backward()
    assert (w0.grad == 0).all()

def test_linear_cross_entropy_under_autocast():
    g = torch.Generator().manual_seed(4)
    h, w = torch.randn(40, 16, generator=g, requires_grad=True), (torch.randn(30, 16, generator=g) * .3).requires_grad_()
    t = torch.randint(0, 30, (40,), generator=g)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, w, t)
        ref = F.cross_entropy(F.linear(h, w).float(), t)
    assert ours.dtype == torch.float32
    gh, gw = torch.autograd.grad(ours, (h, w)); rh, rw = torch.autograd.grad(ref, (h, w))
    assert gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gw, rw, atol=2e-3, rtol=5e-2)

@pytest.mark.parametrize('tied', [True, False])
def test_fused_training_loss_equals_unfused(tied):
    x = torch.randint(0, 512, (2, 10)); labels = x.clone(); labels[0, :3] = -100
    runs = []
    for fuse in (True, False):
        torch.manual_seed(0)
        m = CompassForCausalLM(CompassConfig.from_preset('tiny', tie_word_embeddings=tied, fuse_lm_loss=fuse)).train()
        out = m(x, labels=labels)
        assert (out.logits is None) == fuse
        out.loss.backward()
        runs.append((out.loss.detach(), {n: p.grad for n, p in m.named_parameters()}))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    assert runs[0][1].keys() == runs[1][1].keys()
    for n in runs[0][1]: torch.testing.assert_close(runs[0][1][n], runs[1][1][n], atol=1e-6, rtol=1e-5, msg=n)

def test_fuse_lm_loss_must_be_bool():
    with pytest.raises(ConfigError, match="^fuse_lm_loss: must be true or false"): CompassConfig.from_preset('tiny', fuse_lm_loss='yes')

def test_fused_qk_norm_rope_matches_module_path():
    torch.manual_seed(0)
    att = Attention(CompassConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=8), 0).double()
    for n in (att.q_norm, att.k_norm): torch.nn.init.normal_(n.weight)
    x = torch.randn(3, 7, 48, dtype=torch.float64, requires_grad=True)
    cos, sin = rope_cos_sin(torch.arange(7)[None].expand(3, 7), 8, 1e4, torch.float64)
    params = [x] + list(att.parameters())
    y = att(x, cos, sin, None)                                         # grad on, CPU: the fused function
    gy = torch.autograd.grad(y.pow(2).sum(), params)
    with torch.no_grad(): y_ref0 = att(x, cos, sin, None)              # no grad: the module-by-module path
    torch.testing.assert_close(y, y_ref0)
    qkv = att.qkv(x).view(3, 7, -1, 8)                                  # the module path again, now with autograd
    q, k, v = qkv.split([6, 2, 2], dim=2)
    q = apply_rope(F.rms_norm(q, (8,), att.q_norm.weight, att.q_norm.eps).transpose(1, 2), cos, sin)
    k = apply_rope(F.rms_norm(k, (8,), att.k_norm.weight, att.k_norm.eps).transpose(1, 2), cos, sin)
    yr = att.o(F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True, enable_gqa=True).transpose(1, 2).reshape(3, 7, -1))
    for a, b in zip(gy, torch.autograd.grad(yr.pow(2).sum(), params)): torch.testing.assert_close(a, b)

def test_router_and_shared_in_one_product_match_separate_modules():
    torch.manual_seed(1)
    moe = CompassMoE(16, 8, n_experts=6, k=2, n_shared=2).double()
    x = torch.randn(11, 16, dtype=torch.float64, requires_grad=True)
    y, aux = moe(x)
    torch.testing.assert_close(aux['logits'], moe.router(x))
    params = [x] + list(moe.parameters())
    g1 = torch.autograd.grad((y.sin().sum() + aux['logits'].pow(2).sum()), params)
    logits = moe.router(x)                                             # the same layer, written module by module
    from compass_nbdev.moe import route, experts_grouped
    wts, ids, _ = route(logits, 2)
    y2 = experts_grouped(x, ids, wts, moe.w_gate_up, moe.w_down) + moe.shared(x)
    g2 = torch.autograd.grad((y2.sin().sum() + logits.pow(2).sum()), params)
    torch.testing.assert_close(y, y2)
    for a, b in zip(g1, g2): torch.testing.assert_close(a, b)

# --- packed rows: segment_ids on the model itself ---
from compass_nbdev.model import segment_positions, segment_mask_4d

def test_segment_positions_and_mask():
    seg = torch.tensor([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 2, 3, 3, 3]])
    assert segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1], [0, 0, 1, 2, 0, 1, 2]]
    m = segment_mask_4d(seg)[1, 0]
    assert m[3].tolist() == [False, True, True, True, False, False, False]   # row 3 sees its own example's past only
    assert m.diagonal().all()

def test_packed_rows_equal_examples_alone_and_padding_is_ignored(tiny):
    torch.manual_seed(5)
    a, b = torch.randint(0, 512, (1, 6)), torch.randint(0, 512, (1, 3))
    row = torch.cat([a, b, torch.zeros(1, 2, dtype=torch.long)], 1)
    seg = torch.tensor([[1] * 6 + [2] * 3 + [0] * 2])
    labels = row.clone(); labels[seg == 0] = -100
    with torch.no_grad():
        out = tiny(row, segment_ids=seg, labels=labels)
        torch.testing.assert_close(out.logits[:, :6], tiny(a).logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.logits[:, 6:9], tiny(b).logits, atol=1e-5, rtol=1e-4)
        assert out.expert_load.sum(1).tolist() == [9 * 2] * 3                # the 2 padding tokens are not counted
        la = tiny(a, labels=a).lm_loss; lb = tiny(b, labels=b).lm_loss        # 5 and 2 targets inside each example,
        nxt = F.pad(labels[:, 1:], (0, 1), value=-100)                         # plus the one that crosses examples
        cross = F.cross_entropy(out.logits[0, 5:6], nxt[0, 5:6])
        torch.testing.assert_close(out.lm_loss, (5 * la + 2 * lb + cross) / 8)
    with pytest.raises(ValueError, match='segment_ids'): tiny(row, segment_ids=seg, attention_mask=torch.ones_like(row))
    with pytest.raises(ValueError, match=r'segment_ids has shape \(1, 3\)'): tiny(row, segment_ids=seg[:, :3])
