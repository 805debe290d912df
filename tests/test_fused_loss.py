"""The fused (streamed) code-form loss equals hp_loss's reference path: values, gradients and diagnostics, for every
Table 4 switch, ties at the criteria, empty positive sets, odd N and NB, chunk sizes 1 and B, tiles of any width and
the same injected or drawn ρ mask (issue 14). Forms and objectives the fused path does not cover take the reference
path whatever `fused` says. Issue 21 (F7): masks kept or recomputed in the backward give the same results; bf16 inputs
and bf16 autocast (representative cases): exact counts, values as fp32 of the same inputs."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hpnb.losses import LossConfig, LossInputs, hp_loss

RTOL, ATOL = 1e-5, 1e-6
DTYPES = [torch.float32, torch.bfloat16]
BF16_RTOL = 2e-2  # the reference path computed in bf16 (8-bit mantissa, 2^-8 ≈ 4e-3 per rounding) against fp32


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


def cast_inputs(inp: LossInputs, dtype: torch.dtype) -> LossInputs:
    """The same inputs in `dtype` (z and z_mix new leaves with grad)."""
    cast = lambda t: t.detach().to(dtype).requires_grad_(t.requires_grad) if t is not None else None  # noqa: E731
    return dataclasses.replace(
        inp, **{k: cast(getattr(inp, k)) for k in ("z", "f", "c_ag", "s_ema", "c_sp", "z_mix", "z_aug")}
    )


def assert_counts_equal(new, ref):
    """|P_ag|, |P_sp| per anchor and the dropped anchors identical."""
    assert torch.equal(new.n_pos_ag, ref.n_pos_ag) and new.dropped == ref.dropped
    assert (new.n_pos_sp is None) == (ref.n_pos_sp is None)
    if ref.n_pos_sp is not None:
        assert torch.equal(new.n_pos_sp, ref.n_pos_sp)


def assert_close_parts(new, g_new, m_new, ref, g_ref, m_ref, rtol, atol, grad_rtol, reg_rtol=None):
    """Totals and parts within rtol/atol, gradients within grad_rtol of their largest entry. R (hp_loss's own term,
    computed in the inputs' dtype on both paths) within reg_rtol, which the total inherits through α·R."""
    reg_rtol = rtol if reg_rtol is None else reg_rtol
    reg_atol = reg_rtol * abs(float(ref.reg)) + atol
    tolerances = {
        "phi": (rtol, atol),
        "psi": (rtol, atol),
        "reg": (reg_rtol, atol),
        "total": (rtol, atol + LossConfig().alpha * reg_atol),
    }
    for name, (rt, at) in tolerances.items():
        got, want = getattr(new, name).float(), getattr(ref, name).float()
        torch.testing.assert_close(got, want, rtol=rt, atol=at, msg=name)
    for got, want in ((g_new, g_ref), (m_new, m_ref)):
        if want is None:
            assert got is None
        else:
            scale = float(want.abs().max())
            torch.testing.assert_close(got.float(), want.float(), rtol=grad_rtol, atol=grad_rtol * scale + atol)


def assert_same(inp, neg=None, lam=0.5, dtype=torch.float32, **switches):
    """Reference and fused: equal totals and parts (fp32, rtol 1e-5), gradients, counts and diagnostics.

    bf16: the inputs rounded to bf16. The fused path computes in fp32 (hpnb.fused_loss), so its values equal the fp32
    reference of the same values (rtol 1e-5; gradients returned in bf16, one rounding); the reference path computed in
    bf16 agrees within BF16_RTOL; every count is exact on both."""
    if dtype != torch.float32:
        low = cast_inputs(inp, dtype)
        ref, g_ref, m_ref = run(cast_inputs(low, torch.float32), LossConfig(fused="off", **switches), neg, lam)
        new, g_new, m_new = run(low, LossConfig(fused="on", **switches), neg, lam)
        assert g_new.dtype == dtype and new.total.dtype == torch.float32
        assert_close_parts(new, g_new, m_new, ref, g_ref, m_ref, RTOL, ATOL, grad_rtol=2**-8, reg_rtol=BF16_RTOL)
        assert_counts_equal(new, ref)
        old, g_old, m_old = run(low, LossConfig(fused="off", **switches), neg, lam)
        assert_close_parts(old, g_old, m_old, ref, g_ref, m_ref, BF16_RTOL, 1e-3, grad_rtol=BF16_RTOL)
        assert_counts_equal(old, ref)
        return ref
    ref, g_ref, m_ref = run(inp, LossConfig(fused="off", **switches), neg, lam)
    new, g_new, m_new = run(inp, LossConfig(fused="on", **switches), neg, lam)
    for name in ("total", "phi", "psi", "reg"):
        torch.testing.assert_close(getattr(new, name), getattr(ref, name), rtol=RTOL, atol=ATOL, msg=name)
    torch.testing.assert_close(g_new, g_ref, rtol=RTOL, atol=ATOL)
    if m_ref is None:
        assert m_new is None
    else:
        torch.testing.assert_close(m_new, m_ref, rtol=RTOL, atol=ATOL)
    assert_counts_equal(new, ref)
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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "full")
def test_every_table4_switch(switches, dtype):
    inp = make_inputs()
    ref = assert_same(inp, neg_mask(7, 21), dtype=dtype, **switches)
    assert float(ref.total) > 0  # a real loss, not the all-dropped zero


@pytest.mark.parametrize("b,n", [(1, 5), (2, 9), (3, 7), (5, 3)])
@pytest.mark.parametrize("chunk", ["one", "all"])
@pytest.mark.parametrize("tile", [1, 4, 1000])
def test_odd_shapes_chunks_and_tiles(b, n, chunk, tile):
    inp = make_inputs(b=b, n=n, seed=b * 10 + n)
    assert_same(inp, neg_mask(n, b * n), chunk_images=1 if chunk == "one" else b, tile=tile)


@pytest.mark.parametrize("chunk,tile", [(1, 4), (2, 1000)])
def test_odd_shapes_in_bf16(chunk, tile):
    assert_same(make_inputs(b=3, n=7, seed=37), neg_mask(7, 21), dtype=torch.bfloat16, chunk_images=chunk, tile=tile)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_at_the_criteria_are_decided_identically(dtype):
    """Vectors with entries in {0, ±1/2}: every dot product is exact in fp32 whatever the summation order (and the
    vectors exact in bf16), and the criteria are set to sims that occur, so sim_ij == c_i and sim_ij == c_j happen
    (strict '>' must exclude them)."""
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
        assert_same(inp, neg_mask(n, b * n), dtype=dtype, symmetric=symmetric, tile=5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_positive_sets(dtype):
    inp = make_inputs(crit=0.6)
    inp.c_ag[0] = 2.0  # image 0: c_i above every sim -> one-sided, P_ag(i) is empty and the anchor is dropped
    inp.c_ag[:, 2] = 2.0
    ref = assert_same(inp, neg_mask(7, 21), dtype=dtype, symmetric=False)
    assert ref.dropped >= 7 + 2
    assert_same(inp, neg_mask(7, 21), dtype=dtype)  # symmetric: the same anchors get positives from the c_j side
    none = make_inputs()
    none.c_ag.fill_(2.0)  # nobody has a positive: every anchor is dropped, the contrastive terms vanish
    ref = assert_same(none, neg_mask(7, 21), dtype=dtype)
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


def _saved_mask_bytes(total: torch.Tensor) -> int:
    """Bytes of the packed masks (uint8) that the fused blocks of `total`'s graph keep for the backward."""
    seen, stack, nbytes = set(), [total.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "FusedCodeBlockBackward":
            nbytes += sum(t.numel() for t in node.saved_tensors if t is not None and t.dtype == torch.uint8)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return nbytes


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masks_kept_or_recomputed_give_identical_results(monkeypatch, dtype):
    """Under MASK_BUDGET the forward keeps the packed masks, (B·N)² bytes in all; over it nothing of that size is kept
    and the backward recomputes the masks from the mining vectors: the same values and gradients, bit for bit."""
    import hpnb.fused_loss as fl

    inp = cast_inputs(make_inputs(b=4, n=6), dtype)
    neg, results = neg_mask(6, 24), {}
    calls = []
    original = fl._masks
    monkeypatch.setattr(fl, "_masks", lambda *a: calls.append(1) or original(*a))
    for budget, kept in ((24 * 24, True), (24 * 24 - 1, False)):
        monkeypatch.setattr(fl, "MASK_BUDGET", budget, raising=False)  # raising=False: 9b5ffc3 had no budget
        calls.clear()
        inp.z.grad = inp.z_mix.grad = None
        out = hp_loss(inp, LossConfig(chunk_images=2, tile=5), lam=0.5, neg_mask=neg)
        assert _saved_mask_bytes(out.total) == (24 * 24 if kept else 0)
        out.total.backward()
        assert len(calls) == (1 if kept else 2) * 2 * 5  # 2 blocks × 5 tiles, in the forward (and the backward)
        results[kept] = (out, inp.z.grad.clone(), inp.z_mix.grad.clone())
    (a, ga, ma), (b, gb, mb) = results[True], results[False]
    for name in ("total", "phi", "psi", "reg"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(ga, gb) and torch.equal(ma, mb)
    assert_counts_equal(a, b)
    monkeypatch.setattr(fl, "_masks", original)
    assert_same(make_inputs(b=4, n=6), neg, dtype=dtype, chunk_images=2, tile=5)  # recomputed: still the reference


def test_bf16_counts_above_256_are_exact():
    """|P_ag| = NB − 1 = 299 for every anchor (criteria below every similarity) and |P_sp| spread below and above 256: bf16
    holds integers exactly only up to 256 (299 rounds to 300), so the counts are summed in integers."""
    b, n = 2, 150
    inp = make_inputs(b=b, n=n, k=4, c=3, seed=4)
    inp.c_ag.fill_(-2.0)
    sim_s = inp.s_ema.reshape(-1, 4) @ inp.s_ema.reshape(-1, 4).T
    order = torch.randint(10, 90, (b * n,), generator=torch.Generator().manual_seed(0))  # c_i: i's order-th lowest
    inp.c_sp = sim_s.sort(dim=1).values[torch.arange(b * n), order].reshape(b, n)  # one-sided: 209..289 positives
    low = cast_inputs(inp, torch.bfloat16)
    ref = hp_loss(cast_inputs(low, torch.float32), LossConfig(fused="off"), lam=0.5, neg_mask=neg_mask(n, b * n))
    new = hp_loss(low, LossConfig(fused="on"), lam=0.5, neg_mask=neg_mask(n, b * n))
    assert (new.n_pos_ag == b * n - 1).all() and new.n_pos_ag.dtype == torch.int64
    assert torch.equal(new.n_pos_sp, ref.n_pos_sp) and 50 < int((ref.n_pos_sp > 256).sum()) < 250
    torch.testing.assert_close(new.total, ref.total, rtol=RTOL, atol=ATOL)  # the |w| sums exact, as in fp32


def test_bf16_autocast_leaves_the_fused_block_in_fp32():
    """hp_loss under CPU bf16 autocast (mixed precision around the loss): the fused block decides its masks in exact
    fp32 and computes in fp32, so it gives the results without autocast exactly; the reference path, whose logits
    autocast runs in bf16, has the same positives and values within bf16 rounding."""
    inp = make_inputs(b=4, n=25, k=8, c=8)
    neg = neg_mask(25, 100)
    plain, g_plain, m_plain = run(inp, LossConfig(fused="on"), neg)
    for fused in ("on", "off"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, g, m = run(inp, LossConfig(fused=fused), neg)
        assert_counts_equal(out, plain)
        if fused == "on":
            assert torch.equal(out.total, plain.total) and torch.equal(g, g_plain) and torch.equal(m, m_plain)
        else:
            assert_close_parts(out, g, m, plain, g_plain, m_plain, BF16_RTOL, 1e-3, grad_rtol=BF16_RTOL)


def test_bad_fused_settings_are_rejected():
    with pytest.raises(ValueError, match="fused must be one of"):
        LossConfig(fused="yes")
    with pytest.raises(ValueError, match="tile must be a positive"):
        LossConfig(tile=0)
