"""The workshop: every check passes on its solution, fails helpfully (without raising) on a blank or wrong answer,
and every exercise notebook runs top to bottom, blank and solved, with each check saying ✗ and ✓ respectively.

The kernel exercise runs in Triton's interpreter when there is no GPU (TRITON_INTERPRET must be set before the
kernels are defined, so before the solutions module is imported).
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from compass_nbdev import workshop as W  # noqa: E402
from compass_nbdev import workshop_solutions as S  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKSHOP = ROOT / "nbs" / "workshop"
EXERCISE_NBS = sorted(p for p in WORKSHOP.glob("[0-9]*.ipynb") if W.exercise_names(json.loads(p.read_text(encoding="utf-8"))))

# check name -> (check function, solution the learner's function is named after)
CHECKS = {
    "mix_probs": (W.check_mix_probs, S.mix_probs),
    "repetition": (W.check_repetition, S.repetition),
    "bpe_encode": (W.check_bpe_encode, S.bpe_encode),
    "bytes_per_token": (W.check_bytes_per_token, S.bytes_per_token),
    "merge_subtokenizer": (W.check_merge_subtokenizer, S.merge_subtokenizer),
    "topk_route": (W.check_topk_route, S.topk_route),
    "moe_experts": (W.check_moe_experts, S.moe_experts),
    "moe_layer": (W.check_moe_layer, S.moe_layer),
    "moe_params": (W.check_moe_params, S.moe_params),
    "swiglu_kernel": (W.check_swiglu_triton, S.swiglu_triton),
    "softmax_kernel": (W.check_softmax_triton, S.router_probs_triton),
    "my_aux_loss": (W.check_aux_loss, S.my_aux_loss),
    "my_z_loss": (W.check_z_loss, S.my_z_loss),
    "my_update_bias": (W.check_update_bias, S.my_update_bias),
    "lr_schedule": (W.check_lr_schedule, S.lr_schedule),
    "total_loss": (W.check_total_loss, S.total_loss),
    "train_steps": (W.check_train_steps, S.train_steps),
    "bpb": (W.check_bpb, S.bpb),
    "routing_mi": (W.check_routing_mi, S.routing_mi),
    "my_assistant_mask": (W.check_assistant_mask, S.my_assistant_mask),
    "parse_reply": (W.check_parse_reply, S.parse_reply),
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_check_passes_on_solution(name):
    check, sol = CHECKS[name]
    r = check(sol)
    assert isinstance(r, W.CheckResult)
    assert r.ok, repr(r)
    assert repr(r).startswith("✓")


def _blank(*args, **kwargs):
    raise NotImplementedError  # your code here


@pytest.mark.parametrize("name", list(CHECKS))
def test_check_fails_helpfully_on_blank(name):
    check, _ = CHECKS[name]
    r = check(_blank)  # must not raise
    assert not r.ok and repr(r).startswith("✗")
    assert "not written yet" in r.msg and "NotImplementedError" in r.hint


@pytest.mark.parametrize("name", list(CHECKS))
@pytest.mark.parametrize("bad", [lambda *a, **k: None, lambda *a, **k: 1 / 0, lambda *a, **k: "nonsense", "not a function"],
                         ids=["returns_none", "raises", "wrong_type", "not_callable"])
def test_check_never_raises(name, bad):
    check, _ = CHECKS[name]
    r = check(bad)
    assert not r.ok and r.msg, repr(r)


# plausible mistakes: each must be caught, with a message that says what differs
WRONG = {
    "mix_probs": lambda c, a: {l: n ** a for l, n in c.items()},  # not normalized
    "repetition": lambda t, n=3: 1 - len(set(t.split())) / max(len(t.split()), 1),  # words, not n-grams
    "bpe_encode": lambda w, r: list(w),  # no merges
    "merge_subtokenizer": lambda v, m, o, n: (v, m),  # nothing added
    "moe_layer": lambda x, m: S.moe_experts(x, *reversed(S.topk_route(x @ m.router.weight.T, m.k)), m.w_gate_up, m.w_down),  # no shared experts
    "topk_route": lambda l, k: tuple(torch.softmax(l, -1).topk(k)),  # not renormalized
    "moe_params": lambda H, F, E, k, s: ((E + s) * 3 * H * F, (k + s) * 3 * H * F),  # router forgotten
    "my_aux_loss": lambda p, i: p.shape[-1] * (p.mean(0) * p.mean(0)).sum(),  # f from probabilities
    "my_z_loss": lambda l: torch.logsumexp(l, -1).mean(),  # not squared
    "my_update_bias": lambda b, c, g: b + g * (c.float().mean() - c.float()),  # no sign
    "lr_schedule": lambda st, s: st.lr,  # no warmup nor decay
    "total_loss": lambda lm, aux, z, c: lm + aux + z,  # no coefficients
    "bpb": lambda nll, texts: float(sum(nll) / sum(len(t) for t in texts)),  # nats per character
    "my_assistant_mask": lambda ids, tok: [1] * len(ids),  # the prompt too
    "parse_reply": lambda tok, ids: dict(thinking=None, answer=tok.decode(ids), think_open=False, think_closed=False),  # no parsing
    "routing_mi": lambda c: float(-(c / c.sum() * torch.log2(torch.as_tensor(c / c.sum() + 1e-12)).numpy()).sum()),  # entropy
}


@pytest.mark.parametrize("name", list(WRONG))
def test_check_catches_a_plausible_mistake(name):
    check, _ = CHECKS[name]
    r = check(WRONG[name])
    assert not r.ok, repr(r)
    assert re.search(r"does not match|differ|shape|expected|got", r.msg), repr(r)


def test_every_exercise_has_its_solution_and_check():
    assert len(EXERCISE_NBS) >= 7, EXERCISE_NBS
    for p in EXERCISE_NBS:
        nb = json.loads(p.read_text(encoding="utf-8"))
        src = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        names = W.exercise_names(nb)
        assert 2 <= len(names) <= 4, f"{p.name}: {names}"
        for n in names:
            assert n in CHECKS, f"{p.name}: exercise {n} has no check in this test"
            assert W.show_solution(n, show=False).strip(), n
            assert re.search(rf"check_\w+\({n}\b|check_\w+\(\w+\)", src), f"{p.name}: no check call for {n}"
        assert "default_exp" not in src, f"{p.name}: workshop notebooks export nothing"


def _execute(nb: dict, cwd: Path) -> dict:
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]' (JupyterLab brings nbclient)")
    NotebookClient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]' (JupyterLab brings nbclient)").NotebookClient

    node = nbformat.reads(json.dumps(nb), as_version=4)
    env_interp = os.environ.get("TRITON_INTERPRET")
    NotebookClient(node, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    assert os.environ.get("TRITON_INTERPRET") == env_interp
    return node


def _outputs(node) -> tuple[list[str], list[str]]:
    "The check lines (✓/✗) and the error outputs of an executed notebook."
    lines, errors = [], []
    for c in node.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                errors.append(f"{o.get('ename')}: {o.get('evalue')}")
            txt = o.get("text") or "".join(o.get("data", {}).get("text/plain", ""))
            lines += [ln for ln in txt.splitlines() if ln.startswith(("✓", "✗"))]
    return lines, errors


@pytest.mark.parametrize("path", EXERCISE_NBS, ids=[p.stem for p in EXERCISE_NBS])
def test_blank_notebook_runs_and_every_check_fails(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    lines, errors = _outputs(_execute(nb, path.parent))
    assert not errors, errors
    assert len(lines) == len(W.exercise_names(nb)), lines
    assert all(ln.startswith("✗") for ln in lines), lines


@pytest.mark.parametrize("path", EXERCISE_NBS, ids=[p.stem for p in EXERCISE_NBS])
def test_solved_notebook_runs_and_every_check_passes(path):
    names = W.exercise_names(json.loads(path.read_text(encoding="utf-8")))
    nb = W.solve_notebook(path)
    assert not W.exercise_names(nb) and sum("# solution:" in "".join(c["source"]) for c in nb["cells"]) == len(names)
    lines, errors = _outputs(_execute(nb, path.parent))
    assert not errors, errors
    assert len(lines) == len(names), lines
    assert all(ln.startswith("✓") for ln in lines), lines
