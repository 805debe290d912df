"""The HP loss: hand-computed tiny cases (Eq. 5, code-form combination), invariances, gradcheck, forms; the core cases
in fp32 and bf16 (bf16 inputs, and fp32 inputs under CPU bf16 autocast, the trainer's mixed precision)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpnb.losses import LossConfig, LossInputs, consistency, hp_loss, lambda_schedule
from hpnb.positives import attention_to_lhp, criteria


def _angles(*deg):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in deg])


DTYPES = [torch.float32, torch.bfloat16]
REL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}  # bf16: 8-bit mantissa, a few roundings


def _hand_inputs(dtype=torch.float32):
    """B=1, N=3 (grid 1×3). f: patches 0 and 1 alike, 2 apart -> P_ag(0)={1}, P_ag(1)={0}, P_ag(2)={} (dropped).
    s': patches 1 and 2 alike -> P_sp(1)={2}, P_sp(2)={1}."""
    f = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], dtype=dtype)
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]], dtype=dtype)
    z = _angles(0, 40, 120)[None].to(dtype)
    c = torch.full((1, 3), 0.5, dtype=dtype)
    return LossInputs(z=z, f=f, c_ag=c, s_ema=s, c_sp=c)


def _logp(z, i, j, denom, tau):
    """log of exp(z_i·z_j/τ) / Σ_{k∈denom} exp(z_i·z_k/τ), by hand (in float64 of z's values)."""
    dot = lambda a, b: float(z[a].double() @ z[b].double()) / tau  # noqa: E731
    return dot(i, j) - math.log(sum(math.exp(dot(i, k)) for k in denom))


@pytest.mark.parametrize("fused", ["on", "off"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_code_form_combination_by_hand(dtype, fused):
    inp = _hand_inputs(dtype)
    tau, lam = 0.5, 0.3
    cfg = LossConfig(form="code", tau=tau, use_lhp=False, use_reg=False, fused=fused)
    neg = torch.tensor([[False, False, True], [False, False, False], [True, False, False]])  # R, shape (N, NB)
    out = hp_loss(inp, cfg, lam=lam, neg_mask=neg)
    z = inp.z[0]
    # D(0) = P_ag ∪ R = {1, 2}; D(1) = {0} (P_sp(1) = {2} is NOT in the denominator); anchor 2 dropped
    num = _logp(z, 0, 1, [1, 2], tau) + _logp(z, 1, 0, [0], tau) + lam * _logp(z, 1, 2, [0], tau)
    expected = -(tau / 0.07) * num / (1 + 1 + lam)
    rel = 1e-5 if fused == "on" else REL[dtype]  # the fused block computes in fp32 whatever the inputs' dtype
    assert float(out.total) == pytest.approx(expected, rel=rel)
    assert out.dropped == 1 and out.n_pos_ag.tolist() == [[1, 1, 0]] and out.n_pos_sp.tolist() == [[0, 1, 1]]


def test_paper_form_eq5_by_hand():
    inp = _hand_inputs()
    tau, lam = 0.5, 0.3
    cfg = LossConfig(form="paper", tau=tau, use_lhp=False, use_reg=False)
    n_ag = torch.tensor([[False, False, True], [False, False, False], [False, False, False]])
    n_sp = torch.tensor([[False, False, False], [True, False, False], [False, False, False]])
    out = hp_loss(inp, cfg, lam=lam, paper_negs=(n_ag, n_sp))
    z = inp.z[0]
    phi_ag = [-_logp(z, 0, 1, [1, 2], tau), -_logp(z, 1, 0, [0], tau)]  # Eq. 5, denominators N ∪ P
    phi_sp = [0.0, -_logp(z, 1, 2, [2, 0], tau)]  # anchor 0 has no P_sp; anchor 1: P_sp = {2}, N_sp = {0}
    expected = sum(a + lam * b for a, b in zip(phi_ag, phi_sp, strict=True)) / 2  # mean over the 2 kept anchors
    assert float(out.total) == pytest.approx(expected, rel=1e-5)


def _random_inputs(b=3, h=3, w=4, c=6, k=5, seed=0, requires_grad=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = h * w
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    f = F.normalize(rnd(b, n, c), dim=-1)
    s = F.normalize(rnd(b, n, k), dim=-1)
    z_raw, mix_raw = rnd(b, n, k).requires_grad_(requires_grad), rnd(b, n, k).requires_grad_(requires_grad)
    q_ag, q_sp = F.normalize(rnd(4, c), dim=-1), F.normalize(rnd(4, k), dim=-1)
    attn = 3 * rnd(b, 1 + n, 1 + n)
    z_aug = F.normalize(rnd(b, n, k), dim=-1)

    def make(z_raw=z_raw, mix_raw=mix_raw):
        return LossInputs(
            z=F.normalize(z_raw, dim=-1),
            f=f,
            c_ag=criteria(f.reshape(-1, c), q_ag).reshape(b, n),
            s_ema=s,
            c_sp=criteria(s.reshape(-1, k), q_sp).reshape(b, n),
            z_mix=F.normalize(mix_raw, dim=-1),
            z_aug=z_aug,
            lhp=attention_to_lhp(attn, (h, w)),
            grid=(h, w),
        )

    return make, (z_raw, mix_raw)


@pytest.mark.parametrize(
    "form,propagation,dtype",
    [(f, p, torch.float32) for f in ("code", "paper") for p in ("gradient", "loss")]
    + [("code", "gradient", torch.bfloat16), ("paper", "gradient", torch.bfloat16)],
    ids=str,
)
def test_chunked_equals_unchunked_values_and_gradients(form, propagation, dtype):
    make, (z_raw, mix_raw) = _random_inputs(dtype=dtype)
    rel, atol = (1e-6, 1e-6) if dtype == torch.float32 else (REL[dtype], 2e-3)
    results = []
    for chunk, ckpt in ((1, True), (3, False), (2, True)):
        cfg = LossConfig(form=form, rho=0.4, chunk_images=chunk, checkpoint=ckpt, propagation=propagation)
        out = hp_loss(make(), cfg, lam=0.6, generator=torch.Generator().manual_seed(5))
        grads = torch.autograd.grad(out.total, [z_raw, mix_raw], allow_unused=True)
        results.append((float(out.total.detach()), [g if g is not None else torch.zeros(1) for g in grads]))
    for value, grads in results[1:]:
        assert value == pytest.approx(results[0][0], rel=rel)
        for a, b in zip(grads, results[0][1], strict=True):
            assert a.dtype == dtype and torch.allclose(a.float(), b.float(), atol=atol)


@pytest.mark.parametrize("form,fused", [("code", "on"), ("code", "off"), ("paper", "off")])
def test_bf16_autocast_keeps_the_positives_and_the_value(form, fused):
    """hp_loss under CPU bf16 autocast (mixed precision around the loss): the same positives and dropped anchors
    (decided in exact fp32), the total and the gradients within bf16 rounding of fp32."""
    make, (z_raw, mix_raw) = _random_inputs()
    inp = make()
    cfg = LossConfig(form=form, fused=fused)
    runs = []
    for enabled in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = hp_loss(inp, cfg, lam=0.5, generator=torch.Generator().manual_seed(2))
        runs.append((out, torch.autograd.grad(out.total, [z_raw, mix_raw], retain_graph=True)))
    (ref, ref_grads), (amp, amp_grads) = runs
    assert torch.equal(amp.n_pos_ag, ref.n_pos_ag) and torch.equal(amp.n_pos_sp, ref.n_pos_sp)
    assert amp.dropped == ref.dropped and amp.total.dtype == torch.float32
    assert float(amp.total) == pytest.approx(float(ref.total), rel=REL[torch.bfloat16])
    for a, b in zip(amp_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=REL[torch.bfloat16] * float(b.abs().max()))


def test_rho_one_puts_every_other_patch_in_the_denominator():
    make, _ = _random_inputs()
    inp = make()
    cfg = LossConfig(rho=1.0)
    drawn = hp_loss(inp, cfg, lam=0.4, generator=torch.Generator().manual_seed(0))
    explicit = hp_loss(inp, cfg, lam=0.4, neg_mask=torch.ones(12, 36, dtype=torch.bool))
    assert float(drawn.total) == pytest.approx(float(explicit.total), rel=1e-6)
    partial = hp_loss(inp, LossConfig(rho=0.3), lam=0.4, generator=torch.Generator().manual_seed(0))
    assert float(partial.total) != pytest.approx(float(explicit.total), rel=1e-3)


@pytest.mark.parametrize("form", ["code", "paper"])
def test_lambda_zero_equals_the_task_agnostic_only_loss(form):
    make, _ = _random_inputs()
    inp = make()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    with_sp = hp_loss(inp, LossConfig(form=form), lam=0.0, generator=g())
    without = hp_loss(inp, LossConfig(form=form, use_sp=False), lam=0.9, generator=g())
    assert float(with_sp.total) == pytest.approx(float(without.total), rel=1e-6)
    assert float(hp_loss(inp, LossConfig(form=form), lam=0.9, generator=g()).total) != pytest.approx(
        float(with_sp.total)
    )


@pytest.mark.parametrize("form", ["code", "paper"])
def test_float64_gradcheck(form):
    make, (z_raw, mix_raw) = _random_inputs(b=2, h=2, w=2, c=3, k=3, dtype=torch.float64)
    neg = torch.rand(4, 8, generator=torch.Generator().manual_seed(1)) < 0.5
    negs = tuple(torch.rand(8, 8, generator=torch.Generator().manual_seed(s)) < 0.5 for s in (2, 3))
    cfg = LossConfig(form=form, tau=0.7, chunk_images=1)

    def fn(zr, mr):
        return hp_loss(make(zr, mr), cfg, lam=0.5, neg_mask=neg, paper_negs=negs).total

    assert torch.autograd.gradcheck(fn, (z_raw, mix_raw), eps=1e-6, atol=1e-5)


def test_regulariser_is_the_plain_euclidean_distance():
    z = torch.tensor([[[1.0, 0.0]]])
    assert float(consistency(z, torch.tensor([[[0.0, 1.0]]]))) == pytest.approx(math.sqrt(2), rel=1e-5)
    make, _ = _random_inputs()
    inp = make()
    on, off = (
        hp_loss(inp, LossConfig(alpha=0.05), generator=torch.Generator().manual_seed(0)),
        hp_loss(inp, LossConfig(use_reg=False), generator=torch.Generator().manual_seed(0)),
    )
    assert float(on.total - off.total) == pytest.approx(0.05 * float(consistency(inp.z, inp.z_aug).mean()), rel=1e-5)


def test_lambda_schedule_warms_up_then_ramps_linearly():
    assert [lambda_schedule(t, 100, 20) for t in (0, 20, 21, 60, 100)] == pytest.approx([0, 0, 1 / 80, 0.5, 1.0])
    assert lambda_schedule(50, 100, 0) == 0.5  # the paper's form: no warm-up


# ---- the forms differ exactly where spec §2.11 says ---------------------------------------------------------


def _twins():
    """B=2, N=2: four patches in two twin pairs across the images -> every anchor has exactly one positive."""
    f = torch.tensor([[[1.0, 0], [0, 1]], [[1.0, 0], [0, 1]]])
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(2, 2, 3, generator=g), dim=-1)
    return LossInputs(z=z, f=f, c_ag=torch.full((2, 2), 0.5))


def test_with_equal_positive_counts_code_is_paper_times_tau_over_0_07():
    """§2.11 items 2–3: pair-level mean and the τ/0.07 factor are the only differences once ρ = 1 and λ = 0."""
    inp = _twins()
    kw = dict(tau=0.6, rho=1.0, use_sp=False, use_lhp=False, use_reg=False)
    code = hp_loss(inp, LossConfig(form="code", **kw), neg_mask=torch.ones(2, 4, dtype=torch.bool))
    paper = hp_loss(inp, LossConfig(form="paper", **kw), paper_negs=(torch.ones(4, 4, dtype=torch.bool),) * 2)
    assert float(code.total) == pytest.approx(float(paper.total) * 0.6 / 0.07, rel=1e-6)


def test_with_unequal_positive_counts_pair_level_and_anchor_level_means_differ():
    make, _ = _random_inputs()
    inp = make()
    kw = dict(rho=1.0, use_sp=False, use_lhp=False, use_reg=False)
    code = hp_loss(inp, LossConfig(form="code", base_temperature=0.8, **kw), generator=torch.Generator().manual_seed(0))
    paper = hp_loss(inp, LossConfig(form="paper", **kw), generator=torch.Generator().manual_seed(0))
    assert len(set(code.n_pos_ag[code.n_pos_ag > 0].tolist())) > 1
    assert float(code.total) != pytest.approx(float(paper.total), rel=1e-3)


def test_code_psi_is_mixed_vs_mixed_and_paper_psi_is_mixed_vs_plain():
    """§2.11 item 5."""
    make, _ = _random_inputs()
    inp = make()
    neg = torch.rand(12, 36, generator=torch.Generator().manual_seed(0)) < 0.5
    code = hp_loss(inp, LossConfig(form="code"), lam=0.3, neg_mask=neg)
    mixed_only = LossInputs(**{**inp.__dict__, "z": inp.z_mix})
    assert float(code.psi) == pytest.approx(
        float(hp_loss(mixed_only, LossConfig(form="code", use_lhp=False), lam=0.3, neg_mask=neg).phi), rel=1e-6
    )
    negs = tuple(torch.rand(36, 36, generator=torch.Generator().manual_seed(s)) < 0.5 for s in (1, 2))
    paper = hp_loss(inp, LossConfig(form="paper"), lam=0.3, paper_negs=negs)
    paper_mixed_only = hp_loss(mixed_only, LossConfig(form="paper", use_lhp=False), lam=0.3, paper_negs=negs)
    assert float(paper.psi) != pytest.approx(float(paper_mixed_only.phi), rel=1e-3)


def test_code_denominator_is_shared_and_leaves_task_specific_positives_out():
    """§2.11 item 1: with an empty R, a task-specific-only positive is not in the code form's denominator."""
    inp = _hand_inputs()
    cfg = LossConfig(form="code", tau=0.5, use_lhp=False, use_reg=False)
    empty = torch.zeros(3, 3, dtype=torch.bool)
    full = torch.ones(3, 3, dtype=torch.bool)
    assert float(hp_loss(inp, cfg, lam=0.5, neg_mask=empty).total) != pytest.approx(
        float(hp_loss(inp, cfg, lam=0.5, neg_mask=full).total), rel=1e-3
    )


def test_self_contrastive_objective_eq1():
    z = _angles(0, 90)[None]
    z_aug = _angles(10, 80)[None]
    out = hp_loss(
        LossInputs(z=z, z_aug=z_aug),
        LossConfig(objective="self", tau=0.5, use_lhp=False),
        neg_mask=torch.ones(2, 2, dtype=torch.bool),
    )
    expected = (
        -(_logp(torch.cat([z[0], z_aug[0]]), 0, 2, [2, 3], 0.5) + _logp(torch.cat([z[0], z_aug[0]]), 1, 3, [2, 3], 0.5))
        / 2
    )
    assert float(out.total) == pytest.approx(expected, rel=1e-5)


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="form must be one of"):
        LossConfig(form="poster")
    with pytest.raises(ValueError, match="rho must lie in"):
        LossConfig(rho=2)
    make, _ = _random_inputs()
    inp = make()
    with pytest.raises(ValueError, match="needs z_mix"):
        hp_loss(LossInputs(**{**inp.__dict__, "z_mix": None}), LossConfig())
    with pytest.raises(ValueError, match=r"neg_mask must be bool of shape \(N, NB\) = \(12, 36\)"):
        hp_loss(inp, LossConfig(), neg_mask=torch.ones(3, 3, dtype=torch.bool))
