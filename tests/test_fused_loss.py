"""The fused (streamed) code-form loss equals hp_loss's reference path: values, gradients and diagnostics, for every
Table 4 switch, ties at the criteria, empty positive sets, odd N and NB, chunk sizes 1 and B, tiles of any width and
the same injected or drawn ρ mask (issue 14). Forms and objectives the fused path does not cover take the reference
path whatever `fused` says."""

import pytest
import torch
import torch.nn.functional as F

from hpnb.losses import LossConfig, LossInputs, hp_loss

RTOL, ATOL = 1e-5, 1e-6


def make_inputs(b=3, n=7, k=5, c=6, seed=0, crit=0.6):
    """Random unit vectors; criteria uniform in [0, crit) so most anchors have positives and some have none."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    return LossInputs(
        z=unit(b, n, k).requires_grad_(),
        f=unit(b, n, c),
        c_ag=torch.rand(b, n, generator=g) * crit,
        s_ema=unit(b, n, k),
        c_sp=torch.rand(b, n, generator=g) * crit,
        z_mix=unit(b, n, k).requires_grad_(),
        z_aug=unit(b, n, k),
    )


def run(inp: LossInputs, cfg: LossConfig, neg=None, lam=0.5, generator=None):
    """Loss parts and the gradients of the total with respect to z and z_mix."""
    inp.z.grad = inp.z_mix.grad = None
    out = hp_loss(inp, cfg, lam=lam, neg_mask=neg, generator=generator)
    out.total.backward()
    grad_mix = inp.z_mix.grad.clone() if inp.z_mix.grad is not None else None
    return out, inp.z.grad.clone(), grad_mix


def assert_same(inp, neg=None, lam=0.5, **switches):
    """Reference and fused: equal totals and parts (fp32, rtol 1e-5), gradients, counts and diagnostics."""
    ref, g_ref, m_ref = run(inp, LossConfig(fused="off", **switches), neg, lam)
    new, g_new, m_new = run(inp, LossConfig(fused="on", **switches), neg, lam)
    for name in ("total", "phi", "psi", "reg"):
        torch.testing.assert_close(getattr(new, name), getattr(ref, name), rtol=RTOL, atol=ATOL, msg=name)
    torch.testing.assert_close(g_new, g_ref, rtol=RTOL, atol=ATOL)
    if m_ref is None:
        assert m_new is None
    else:
        torch.testing.assert_close(m_new, m_ref, rtol=RTOL, atol=ATOL)
    assert torch.equal(new.n_pos_ag, ref.n_pos_ag) and new.dropped == ref.dropped
    assert (new.n_pos_sp is None) == (ref.n_pos_sp is None)
    if ref.n_pos_sp is not None:
        assert torch.equal(new.n_pos_sp, ref.n_pos_sp)
    assert new.phi_ag == pytest.approx(ref.phi_ag, rel=RTOL, nan_ok=True)
    assert new.phi_sp == pytest.approx(ref.phi_sp, rel=RTOL, nan_ok=True)
    return ref


def neg_mask(n, nb, rho=0.3, seed=1):
    return torch.rand(n, nb, generator=torch.Generator().manual_seed(seed)) < rho


SWITCHES = [
    {},
    {"use_sp": False},
    {"use_lhp": False},
    {"symmetric": False},
    {"use_reg": False},
    {"use_sp": False, "use_lhp": False},
    {"use_sp": False, "use_lhp": False, "symmetric": False, "use_reg": False},
]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "full")
def test_every_table4_switch(switches):
    inp = make_inputs()
    ref = assert_same(inp, neg_mask(7, 21), **switches)
    assert float(ref.total) > 0  # a real loss, not the all-dropped zero


@pytest.mark.parametrize("b,n", [(1, 5), (2, 9), (3, 7), (5, 3)])
@pytest.mark.parametrize("chunk", ["one", "all"])
@pytest.mark.parametrize("tile", [1, 4, 1000])
def test_odd_shapes_chunks_and_tiles(b, n, chunk, tile):
    inp = make_inputs(b=b, n=n, seed=b * 10 + n)
    assert_same(inp, neg_mask(n, b * n), chunk_images=1 if chunk == "one" else b, tile=tile)


def test_ties_at_the_criteria_are_decided_identically():
    """Vectors with entries in {0, ±1/2}: every dot product is exact in fp32 whatever the summation order, and the
    criteria are set to sims that occur, so sim_ij == c_i and sim_ij == c_j happen (strict '>' must exclude them)."""
    g = torch.Generator().manual_seed(3)
    b, n, k = 3, 6, 4
    half = lambda: (torch.randint(-1, 2, (b, n, k), generator=g) * 0.5).float()  # noqa: E731
    f, s = half(), half()
    f[..., 0] += 0.5 * (f.abs().sum(-1) == 0)  # no zero vector
    sim_f = f.reshape(-1, k) @ f.reshape(-1, k).T
    c_ag = sim_f[torch.arange(b * n), torch.randint(0, b * n, (b * n,), generator=g)].reshape(b, n)
    sim_s = s.reshape(-1, k) @ s.reshape(-1, k).T
    c_sp = sim_s[torch.arange(b * n), torch.randint(0, b * n, (b * n,), generator=g)].reshape(b, n)
    inp = make_inputs(b=b, n=n, k=k)
    inp.f, inp.s_ema, inp.c_ag, inp.c_sp = f, s, c_ag, c_sp
    assert bool((sim_f == c_ag.reshape(-1)[:, None]).sum() > b * n)  # ties present beyond the diagonal
    for symmetric in (True, False):
        assert_same(inp, neg_mask(n, b * n), symmetric=symmetric, tile=5)


def test_empty_positive_sets():
    inp = make_inputs(crit=0.6)
    inp.c_ag[0] = 2.0  # image 0: c_i above every sim -> one-sided, P_ag(i) is empty and the anchor is dropped
    inp.c_ag[:, 2] = 2.0
    ref = assert_same(inp, neg_mask(7, 21), symmetric=False)
    assert ref.dropped >= 7 + 2
    assert_same(inp, neg_mask(7, 21))  # symmetric: the same anchors get positives from the c_j side
    none = make_inputs()
    none.c_ag.fill_(2.0)  # nobody has a positive: every anchor is dropped, the contrastive terms vanish
    ref = assert_same(none, neg_mask(7, 21))
    assert ref.dropped == 21 and float(ref.phi) == 0.0


def test_the_same_rho_draw_gives_the_same_result():
    """Injected: the same mask; drawn: the same generator state -> the same mask on both paths."""
    inp = make_inputs()
    assert_same(inp, neg_mask(7, 21, rho=0.02))
    ref, *_ = run(inp, LossConfig(fused="off", rho=0.3), generator=torch.Generator().manual_seed(5))
    new, *_ = run(inp, LossConfig(fused="on", rho=0.3), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(new.total, ref.total, rtol=RTOL, atol=ATOL)
    other, *_ = run(inp, LossConfig(fused="on", rho=0.3), generator=torch.Generator().manual_seed(6))
    assert not torch.isclose(other.total, ref.total, rtol=RTOL)  # the draw matters, so the check above can fail


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_lambda_ends(lam):
    assert_same(make_inputs(), neg_mask(7, 21), lam=lam)


@pytest.mark.parametrize(
    "switches", [{"form": "paper"}, {"objective": "self"}, {"propagation": "loss"}], ids=["paper", "self", "loss-prop"]
)
def test_forms_without_a_fused_path_take_the_reference_path(switches):
    assert not LossConfig(fused="on", **switches).streams
    assert LossConfig(fused="on").streams and LossConfig().streams and not LossConfig(fused="off").streams


def test_auto_streams_on_the_cpu_only_until_the_gpu_is_measured():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert LossConfig().fused_on(cpu) and not LossConfig().fused_on(cuda)
    assert LossConfig(fused="on").fused_on(cuda) and LossConfig(fused="compile").fused_on(cuda)
    assert not LossConfig(fused="off").fused_on(cpu) and not LossConfig(form="paper").fused_on(cpu)


def test_fused_path_keeps_only_one_tile_alive(monkeypatch):
    """No float tensor of the fused block is wider than a tile: every logits matrix it builds is (R, ≤ tile)."""
    import hpnb.fused_loss as fl

    widths = []
    original = fl._forward_tile

    def spy(logits, *args):
        widths.append(logits.shape[1])
        return original(logits, *args)

    monkeypatch.setattr(fl, "_kernels", lambda compiled: (spy, fl._backward_tile))
    inp = make_inputs(b=4, n=6)
    hp_loss(inp, LossConfig(tile=5), lam=0.5, neg_mask=neg_mask(6, 24)).total.backward()
    assert max(widths) == 5 and sum(widths) == 2 * 24 * 1  # Φ and Ψ over 24 columns, one block of 4 images


def test_bad_fused_settings_are_rejected():
    with pytest.raises(ValueError, match="fused must be one of"):
        LossConfig(fused="yes")
    with pytest.raises(ValueError, match="tile must be a positive"):
        LossConfig(tile=0)
