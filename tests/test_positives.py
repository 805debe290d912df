"""Hidden positives against hand-computed cases: Eq. 2, 3, 4 (GHP) and Eq. 7, 9 / spec §2.7 (LHP); the core ones in
fp32 and bf16 (the dtype of what leaves the trainer's autocast region): thresholds decided in exact fp32 either way."""

import math

import pytest
import torch
import torch.nn.functional as F

from hpnb.positives import (
    attention_to_lhp,
    build_reference_pools,
    criteria,
    dense_lhp_matrix,
    mix_codes,
    positive_block,
    positive_sets,
    sample_patches_per_image,
    window_index,
)

DTYPES = [torch.float32, torch.bfloat16]


def _unit(*angles_deg, dtype=torch.float32):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_criteria_eq2_is_the_max_similarity_to_the_pool(dtype):
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=dtype)
    pool = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=dtype)
    assert criteria(x, pool).dtype == torch.float32  # thresholds in at least fp32
    expected = [1.0, float(torch.tensor(0.8, dtype=dtype))]  # bf16 holds 0.8 as 0.80078125, exactly compared
    assert criteria(x, pool).tolist() == pytest.approx(expected, rel=1e-6)
    assert criteria(x, pool, chunk=1).tolist() == pytest.approx(expected, rel=1e-6)  # chunked == unchunked


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_eq3_symmetric_selection_by_hand(dtype):
    f = _unit(0, 30, 90, dtype=dtype)  # sims: s12 = .866, s13 = 0, s23 = .5
    c = torch.tensor([0.9, 0.95, 0.4])
    sym = positive_block(f, f, c, c, 0, symmetric=True)
    # P(1) = {}: .866 is below both c1 and c2; P(2) = {3}: .5 > c3; P(3) = {2}: .5 > c3
    assert sym.tolist() == [[False, False, False], [False, False, True], [False, True, False]]
    one_sided = positive_block(f, f, c, c, 0, symmetric=False)
    assert one_sided.tolist() == [[False, False, False], [False, False, False], [False, True, False]]
    assert torch.equal(sym, sym.T) and not torch.equal(one_sided, one_sided.T)


def test_eq4_task_specific_sets_use_the_same_rule_with_their_own_pool():
    s = _unit(0, 10, 100, 95)
    pool = _unit(50)  # c' = cos 50, cos 40, cos 50, cos 45 -> similar pairs (1,2) and (3,4) pass
    p = positive_sets(s, pool)
    assert p.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, True],
        [False, False, True, False],
    ]


def _near_threshold(dtype, autocast: bool, stored=torch.float32):
    """Criteria and positives of 64 unit vectors in 4 tight clusters (similarities crowd around their criteria, taken
    against 8 more points of the clusters), the vectors rounded to `dtype`, held in `stored`, optionally computed under
    CPU bf16 autocast; anchors 8..39 as one block."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    x = F.normalize(centres[torch.arange(64) % 4] + 0.15 * torch.randn(64, 16, generator=g), dim=1)
    pool = F.normalize(centres[torch.arange(8) % 4] + 0.15 * torch.randn(8, 16, generator=g), dim=1)
    x, pool = x.to(dtype).to(stored), pool.to(dtype).to(stored)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        c = criteria(x, pool)
        return positive_block(x[8:40], x, c[8:40], c, 8), c


@pytest.mark.parametrize(
    "stored,autocast", [(torch.bfloat16, False), (torch.float32, True)], ids=["bf16-inputs", "fp32-under-bf16-autocast"]
)
def test_positives_are_decided_in_exact_fp32_whatever_the_dtype(stored, autocast):
    """bf16 inputs give the positives of the same values held in fp32, and bf16 autocast changes nothing: a similarity
    rounded to bf16 (steps of 2^-8 near 1) moves across its criterion (3 of these 2048 pairs would flip)."""
    rounded = torch.bfloat16 if stored == torch.bfloat16 else torch.float32
    pos, c = _near_threshold(rounded, autocast, stored)
    ref_pos, ref_c = _near_threshold(rounded, False, torch.float32)
    assert c.dtype == torch.float32 and torch.equal(c, ref_c)
    assert torch.equal(pos, ref_pos)
    assert 100 < int(pos.sum()) < 1000  # a real mix of positives and non-positives


def test_the_anchor_is_never_its_own_positive_in_any_block():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(12, 5, generator=g), dim=1)
    c = torch.full((12,), -1.0)  # every pair passes the criterion
    full = positive_block(x, x, c, c, 0)
    assert not full.diagonal().any() and full.sum() == 12 * 11
    block = positive_block(x[4:8], x, c[4:8], c, 4)
    assert torch.equal(block, full[4:8])


def test_pool_takes_one_normalised_patch_per_image():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [5.0, 0.0]])[:, :, None, None].expand(3, 2, 2, 2).clone()
    x[0, :, 0, 0] = torch.tensor([1.0, 1.0])  # image 0: patch 0 differs from patches 1-3
    pools = [sample_patches_per_image(x, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(p.shape == (3, 2) and torch.allclose(p.norm(dim=1), torch.ones(3)) for p in pools)
    assert all(torch.allclose(p[1:], torch.tensor([[0.0, 1.0], [1.0, 0.0]])) for p in pools)
    firsts = {tuple(round(v, 3) for v in p[0].tolist()) for p in pools}
    assert firsts == {(0.6, 0.8), (0.707, 0.707)}  # a random patch of each image, both kinds drawn


def test_window_has_9_6_4_cells_inside_the_grid():
    _, valid = window_index(3, 3)
    assert valid.sum(1).tolist() == [4, 6, 4, 6, 9, 6, 4, 6, 4]


def _centre_row_attention(row):
    """Attention (1, 10, 10) on a 3×3 grid whose centre anchor (patch 4) has the given pre-softmax scores."""
    attn = torch.zeros(1, 10, 10)
    attn[0, 5, 1:] = torch.tensor(row)  # +1 for the CLS row/column
    return attn


def test_code_form_lhp_by_hand():
    row = [1.0, 2, 3, 4, 5, 6, 7, 8, 9]
    weights, denom = attention_to_lhp(_centre_row_attention(row), (3, 3), "code", sigma=28.0)
    lo, hi = 1 + 0.8 * 1, 8 + 0.2 * 1  # 10th / 90th percentiles, linear interpolation
    clipped = [min(max(v, lo), hi) for v in row]
    soft = [math.exp(v) / sum(math.exp(u) for u in clipped) for v in clipped]
    t = [28.0 * p for p in soft]
    keep = [v >= sum(t) / 9 for v in t]
    expected = [v if k else 0.0 for v, k in zip(t, keep, strict=True)]
    assert weights[0, 4].tolist() == pytest.approx(expected, rel=1e-5)
    assert denom[0, 4] == 9 and denom[0, 0] == 4  # divide by the window size (9 / 6 / 4)
    s = torch.eye(9).T.reshape(1, 9, 3, 3)  # one-hot codes: channel j = patch j
    mixed = mix_codes(s, weights, denom)[0, :, 1, 1]
    assert mixed.tolist() == pytest.approx([e / 9 for e in expected], rel=1e-5)


def test_paper_form_lhp_by_hand():
    row = [1.0, 2, 3, 4, 5, 6, 7, 8, 9]
    weights, denom = attention_to_lhp(_centre_row_attention(row), (3, 3), "paper", sigma=28.0)
    soft = [math.exp(v) / sum(math.exp(u) for u in row) for v in row]
    keep = [p > 1 / 9 for p in soft]  # Eq. 7: t_j > Avg(T̃_i)
    assert denom[0, 4] == sum(keep)  # Eq. 9 divides by |I_local|
    assert weights[0, 4].tolist() == pytest.approx(
        [28.0 * p if k else 0.0 for p, k in zip(soft, keep, strict=True)], rel=1e-5
    )


def test_code_form_keeps_a_row_that_is_constant_after_clipping():
    weights, _ = attention_to_lhp(_centre_row_attention([0.0] * 9), (3, 3), "code")
    assert (weights[0, 4] > 0).all()  # "≥ computed mean" keeps every entry of a flat row


@pytest.mark.parametrize("form", ["code", "paper"])
def test_gradient_reaches_exactly_the_kept_neighbours_in_proportion(form):
    g = torch.Generator().manual_seed(1)
    h, w, k = 4, 5, 3
    attn = 3 * torch.randn(2, 1 + h * w, 1 + h * w, generator=g)
    weights, denom = attention_to_lhp(attn, (h, w), form)
    s = torch.randn(2, k, h, w, generator=g, requires_grad=True)
    mixed = mix_codes(s, weights, denom)
    coef = dense_lhp_matrix(weights, denom, (h, w))  # (B, N, N)
    for b, anchor in [(0, 7), (1, 0), (1, 19)]:
        (grad,) = torch.autograd.grad(mixed[b, :, anchor // w, anchor % w].sum(), s, retain_graph=True)
        expected = coef[b, anchor].reshape(h, w)
        assert torch.allclose(grad[b], expected.expand(k, h, w), atol=1e-6)
        assert (grad[1 - b] == 0).all()  # nothing leaks to other images
        assert ((grad[b, 0] != 0) == (expected != 0)).all()  # only kept window cells receive gradient


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mixing_equals_the_dense_matrix_product(dtype):
    """In fp32 whatever the codes' dtype (bf16 codes from an autocast head, attention in bf16 too)."""
    g = torch.Generator().manual_seed(2)
    attn = torch.randn(3, 1 + 30, 1 + 30, generator=g).to(dtype)
    weights, denom = attention_to_lhp(attn, (5, 6))
    s = torch.randn(3, 4, 5, 6, generator=g).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        mixed = mix_codes(s, weights, denom)
    dense = torch.einsum("bij,bkj->bki", dense_lhp_matrix(weights, denom, (5, 6)), s.float().flatten(2))
    assert weights.dtype == mixed.dtype == torch.float32
    assert torch.allclose(mixed, dense.reshape(3, 4, 5, 6), atol=1e-6)


def test_reference_pools_take_m_images_and_are_unit_length():
    from hpnb.heads import HPHeads

    heads = HPHeads(6, 4).train()
    batches = (torch.randn(3, 6, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(4))
    q_ag, q_sp = build_reference_pools(batches, heads, pool_size=7, generator=torch.Generator().manual_seed(0))
    assert q_ag.shape == (7, 6) and q_sp.shape == (7, 4)
    assert torch.allclose(q_ag.norm(dim=1), torch.ones(7), atol=1e-3)
    with pytest.raises(ValueError, match="M=20 needs 20 images, the data gave 12"):
        build_reference_pools((torch.randn(3, 6, 2, 2) for _ in range(4)), heads, pool_size=20)


def test_pools_picked_before_the_heads_equal_heads_then_pick():
    """build_reference_pools runs the heads on the picked patch only; with the same draws (the patch indices from
    `generator`, the channel dropout from the global RNG) that gives the pools of running them on whole maps."""
    from hpnb.heads import HPHeads

    heads = HPHeads(6, 4, dropout=0.5).train()
    feats = [torch.randn(3, 6, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    torch.manual_seed(1)
    q_ag, q_sp = build_reference_pools(iter(feats), heads, pool_size=8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    gen, ref_ag, ref_sp = torch.Generator().manual_seed(0), [], []
    for f in feats:
        f = f[: 8 - 3 * len(ref_ag)]
        ref_ag.append(sample_patches_per_image(heads.mining_features(f), gen).half())
        ref_sp.append(sample_patches_per_image(heads.momentum_codes(f), gen).half())
    assert torch.allclose(q_ag, F.normalize(torch.cat(ref_ag).float(), dim=1), atol=1e-6)
    assert torch.allclose(q_sp, F.normalize(torch.cat(ref_sp).float(), dim=1), atol=1e-6)
    assert (q_ag == 0).any(), "dropout 0.5 must have zeroed some channels (the draws are then compared too)"


def test_pool_images_are_distinct_drawn_without_replacement_and_avoid_the_anchors():
    from hpnb.positives import pool_image_indices

    g = torch.Generator().manual_seed(0)
    idx = pool_image_indices(40, 24, g, exclude=range(16))
    assert len(idx) == 24 and len(set(idx.tolist())) == 24 and min(idx.tolist()) >= 16
    # without exclusions it is the trainer's draw: the first M of one permutation
    assert torch.equal(
        pool_image_indices(40, 24, torch.Generator().manual_seed(3)),
        torch.randperm(40, generator=torch.Generator().manual_seed(3))[:24],
    )


def test_a_pool_larger_than_the_images_left_is_refused_with_the_numbers():
    from hpnb import HpnbError
    from hpnb.positives import pool_image_indices

    with pytest.raises(HpnbError, match=r"M=256 .* only 84 images are available outside the 16 anchor images"):
        pool_image_indices(100, 256, exclude=range(16))
