"""The ops registry: every registered implementation of every op against the op's reference (outputs to 1e-6,
gradients to 1e-5 relative, float32, awkward shapes), the `ops` setting, and checkpoints saved before the registry."""
import json, math, shutil
from pathlib import Path
import pytest, torch
from compass_nbdev.core import ConfigError
from compass_nbdev.ops import OPS, get_op, use_ops, load_providers, list_ops, register_op
from compass_nbdev.model import CompassConfig, CompassForCausalLM, rope_cos_sin
from compass_nbdev import fast_cpu  # noqa: F401  (registers the CPU fast paths; the model imports it too)

load_providers()                      # the Triton kernels register themselves when triton imports (interpreted on CPU)
FIXTURE = Path(__file__).parent / 'fixtures' / 'model_v0'

def _g(seed): return torch.Generator().manual_seed(seed)
def _r(*shape, g, scale=1.): return torch.randn(*shape, generator=g) * scale

def _rms_norm(g):
    for shape in [(1, 1, 7), (3, 5, 16), (2, 3, 4, 33)]:
        yield [_r(*shape, g=g, scale=3), _r(shape[-1], g=g) + 1, 1e-6], [0, 1]

def _rope(g):
    for B, h, S, hd in [(1, 1, 1, 2), (2, 3, 7, 12), (1, 2, 5, 34)]:
        cos, sin = rope_cos_sin(torch.randint(0, 500, (B, S), generator=g), hd, 1e4)
        yield [_r(B, h, S, hd, g=g), cos, sin], [0]

def _qk_norm_rope(g):
    for B, S, nh, nkv, hd in [(1, 1, 1, 1, 2), (2, 5, 4, 2, 8), (1, 3, 6, 3, 10)]:
        cos, sin = rope_cos_sin(torch.arange(S)[None].expand(B, S), hd, 1e4)
        yield [_r(B, S, nh + 2 * nkv, hd, g=g, scale=2), _r(hd, g=g) + 1, _r(hd, g=g) + 1, cos, sin, nh, nkv, 1e-6], [0, 1, 2]

def _attention(g):
    for B, nh, nkv, S, hd, masked in [(1, 1, 1, 1, 4, False), (2, 4, 2, 7, 8, False), (1, 6, 3, 5, 10, True)]:
        mask = (torch.rand(B, 1, S, S, generator=g) > .3) | torch.eye(S, dtype=torch.bool) if masked else None
        yield [_r(B, nh, S, hd, g=g), _r(B, nkv, S, hd, g=g), _r(B, nkv, S, hd, g=g), mask, not masked], [0, 1, 2]

def _route(g):
    for T, E, k in [(1, 4, 1), (7, 9, 3), (33, 5, 4), (16, 8, 2)]:
        for bias, renorm in [(None, True), (_r(E, g=g, scale=.1), False)]:
            yield [_r(T, E, g=g, scale=2), k, bias, renorm], [0]

def _experts(g):
    for T, H, Fd, E, k in [(1, 10, 6, 4, 1), (7, 12, 6, 9, 3), (33, 20, 8, 5, 4), (16, 16, 16, 8, 2)]:
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
        yield [_r(T, H, g=g), ids, torch.rand(T, k, generator=g) + .1, _r(E, H, 2 * Fd, g=g, scale=H ** -.5),
               _r(E, Fd, H, g=g, scale=Fd ** -.5)], [0, 2, 3, 4]

def _targets(N, V, g):
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.rand(N, generator=g) < .2] = -100
    if N > 1: t[0] = 0                                            # at least one kept target
    else: t[:] = 1
    return t

def _cross_entropy(g):
    for N, V in [(1, 5), (9, 37), (130, 11)]:
        yield [_r(N, V, g=g, scale=3), _targets(N, V, g)], [0]

def _head_loss(g):
    for N, H, V in [(1, 3, 5), (9, 16, 37), (150, 24, 70)]:
        yield [_r(N, H, g=g, scale=2), _r(V, H, g=g), _targets(N, V, g)], [0, 1]

CASES = dict(rms_norm=_rms_norm, rope=_rope, qk_norm_rope=_qk_norm_rope, attention=_attention, route=_route,
             experts=_experts, cross_entropy=_cross_entropy, head_loss=_head_loss)
IMPLS = [(op, name) for op, impls in OPS.items() if not op.startswith('_') for name, i in impls.items() if not i.reference]

def test_every_op_has_a_reference_and_cases():
    ops = {op for op in OPS if not op.startswith('_')}
    assert ops == set(CASES), ops ^ set(CASES)
    for op in ops: assert sum(i.reference for i in OPS[op].values()) == 1, op
    assert {'fused', 'rope_fn'} <= set(OPS['qk_norm_rope']) and 'grouped' in OPS['experts']

def _rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()

def _close(f, r, exact, tol)->bool:
    "Within `tol` (relative) of the fp32 reference, or of the float64 truth the reference itself only approximates."
    return _rel(f, r) < tol or _rel(f, exact) < tol

def _run(fn, args, diff):
    args = [a.clone().requires_grad_() if i in diff else a for i, a in enumerate(args)]
    out = fn(*args)
    outs = out if isinstance(out, tuple) else (out,)
    g = _g(99)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs if o.is_floating_point())
    grads = torch.autograd.grad(loss, [args[i] for i in diff])
    return [o.detach() for o in outs], list(grads)

@pytest.mark.parametrize('op,name', IMPLS, ids=[f'{o}-{n}' for o, n in IMPLS])
def test_impl_matches_reference(op, name):
    ref_fn, fn = get_op(op, 'cpu', 'reference'), OPS[op][name].fn
    assert fn is not ref_fn
    for case, (args, diff) in enumerate(CASES[op](_g(0))):
        (ro, rg), (fo, fg) = _run(ref_fn, args, diff), _run(fn, args, diff)
        assert len(ro) == len(fo)
        for i, (r, f) in enumerate(zip(ro, fo)):
            assert r.shape == f.shape and r.dtype == f.dtype, (case, i, r.dtype, f.dtype)
            if not r.is_floating_point(): assert torch.equal(r, f), (case, i)
            else: assert _rel(f, r) < 1e-6, (case, i, _rel(f, r))
        if all(_rel(f, r) < 1e-5 for r, f in zip(rg, fg)): continue
        # a gradient that is a short sum with cancellation (e.g. one token, one expert: a single dot product) carries an
        # fp32 rounding error of its own; there, the implementation may instead be within the tolerance of the float64 truth
        _, eg = _run(ref_fn, [a.double() if a.is_floating_point() else a for a in args], diff)
        for i, (r, f, e) in enumerate(zip(rg, fg, eg)): assert _close(f, r, e, 1e-5), (case, 'grad', diff[i], _rel(f, r), _rel(f, e), _rel(r, e))

def test_auto_picks_the_fast_cpu_paths_and_never_the_interpreter():
    picks = {op: get_op(op, 'cpu').__name__ for op in CASES}
    assert picks == dict(rms_norm='rms_norm_fused', rope='rope_fused', qk_norm_rope='qk_norm_rope_fused',
                         attention='attention', route='route', experts='experts_grouped',
                         cross_entropy='cross_entropy_fused', head_loss='linear_cross_entropy'), picks
    rows = list_ops()
    assert {(r['op'], r['name']) for r in rows} >= {(o, n) for o, n in IMPLS}
    assert all('cpu' not in r['auto_picks_on'] for r in rows if r['name'] == 'triton')

def test_choice_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^ops: must be 'auto', 'reference' or \{op: name\}, got 'fast'"):
        CompassConfig.from_preset('tiny', ops='fast')
    with pytest.raises(ConfigError, match=r"^ops.rms_norm: 'slow' is not allowed; choose one of auto, reference, fused"):
        CompassConfig.from_preset('tiny', ops={'rms_norm': 'slow'})
    with pytest.raises(ConfigError, match=r"^ops.norm: unknown op; registered: "):
        CompassConfig.from_preset('tiny', ops={'norm': 'reference'})
    with pytest.raises(ConfigError, match=r"^ops.rope: 'x' is not an implementation of rope; allowed: auto, reference, fused"):
        get_op('rope', 'cpu', {'rope': 'x'})
    with pytest.raises(ValueError, match='reference already'): register_op('rope', 'other', print, reference=True)

def _train_step(m, x):
    out = m(x, labels=x); out.loss.backward()
    return out.loss.detach(), {n: p.grad for n, p in m.named_parameters()}

@pytest.mark.parametrize('choice', ['reference', {'experts': 'loop', 'qk_norm_rope': 'rope_fn'}, {'*': 'reference', 'experts': 'grouped'}])
def test_model_with_any_choice_gives_the_same_loss_and_grads(choice):
    x = torch.randint(0, 512, (2, 9), generator=_g(5))
    torch.manual_seed(0); a = CompassForCausalLM(CompassConfig.from_preset('tiny', tie_word_embeddings=False)).train()
    torch.manual_seed(0); b = CompassForCausalLM(CompassConfig.from_preset('tiny', tie_word_embeddings=False, ops=choice)).train()
    la, ga = _train_step(a, x); lb, gb = _train_step(b, x)
    assert abs(la - lb) / la < 1e-6
    for n in ga: assert _rel(gb[n], ga[n]) < 1e-5, n
    a.zero_grad()
    with use_ops(choice): lc, gc = _train_step(a, x)               # the same choice for a block, same model
    assert torch.equal(lc, lb)

def test_old_config_fields_still_load(tmp_path):
    c = json.loads((FIXTURE / 'config.json').read_text())
    assert c['fuse_lm_loss'] is False and c['moe_impl'] == 'grouped' and 'ops' not in c   # saved before the registry
    cfg = CompassConfig.from_pretrained(FIXTURE)
    assert (cfg.fuse_lm_loss, cfg.moe_impl, cfg.ops) == (False, 'grouped', 'auto')
    for impl in ('loop', 'triton', 'auto'): CompassConfig.from_preset('tiny', moe_impl=impl)
    with pytest.raises(ConfigError, match=r"^moe_impl: 'fast' is not allowed; choose one of auto, grouped, loop"):
        CompassConfig.from_preset('tiny', moe_impl='fast')

def test_checkpoint_saved_before_the_registry_loads_and_gives_the_same_outputs(tmp_path):
    d = tmp_path / 'm'; shutil.copytree(FIXTURE, d)
    exp = torch.load(d / 'expected.pt')
    m = CompassForCausalLM.from_pretrained(d).eval()
    with torch.no_grad():
        out = m(exp['x'], labels=exp['x'])
        # expected.pt was computed on another CPU model: BLAS kernels round differently per CPU (seen: 2e-6 on logits of ~1)
        torch.testing.assert_close(out.logits, exp['logits'], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.loss, exp['loss'], atol=1e-5, rtol=1e-5)
        with use_ops('reference'):                                # the plain ops: the same up to rounding
            torch.testing.assert_close(m(exp['x']).logits, exp['logits'], atol=1e-5, rtol=1e-4)
    m.save_pretrained(tmp_path / 'again')                         # and it saves with the same keys
    from safetensors.torch import load_file
    assert load_file(tmp_path / 'again' / 'model.safetensors').keys() == load_file(d / 'model.safetensors').keys()

def test_the_model_lesson_has_no_device_branch_and_no_autograd_function():
    import compass_nbdev.model as M, compass_nbdev.moe as E
    src = Path(M.__file__).read_text()
    assert 'device.type' not in src and 'autograd.Function' not in src
    assert 'device.type' not in Path(E.__file__).read_text()      # the MoE layer asks the registry too
