"""Heads: S (code: linear + MLP summed; paper: plain MLP), S' (EMA), Z (linear + L2 norm); the forward in fp32 and
under CPU bf16 autocast (the trainer's mixed precision: fp32 weights, bf16 products)."""

import pytest
import torch

from hpnb.heads import HPHeads, ProjectionHead, SegmentationHead, ema_update, momentum_copy

DTYPES = [torch.float32, torch.bfloat16]


def amp(dtype: torch.dtype):
    """CPU autocast to `dtype`, off for fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_code_head_is_linear_plus_mlp_and_paper_head_is_the_mlp(dtype):
    torch.manual_seed(0)
    code, paper = SegmentationHead(8, 4, form="code").eval(), SegmentationHead(8, 4, form="paper").eval()
    x = torch.randn(2, 8, 3, 3)
    expected = code.nonlinear(x) + code.linear(x)  # eval: dropout off; in fp32
    with amp(dtype):
        out, out_paper = code(x), paper(x)
    assert out.shape == (2, 4, 3, 3) and out.dtype == out_paper.dtype == dtype
    atol = 1e-6 if dtype == torch.float32 else 2**-7 * float(expected.abs().max())  # bf16: ~3 roundings
    assert torch.allclose(out.float(), expected, atol=atol)
    assert not hasattr(paper, "linear") and torch.allclose(out_paper.float(), paper.nonlinear(x), atol=atol)
    n_code = sum(p.numel() for p in code.parameters())
    n_paper = sum(p.numel() for p in paper.parameters())
    assert n_code - n_paper == 8 * 4 + 4  # the extra 1×1 linear branch


def test_each_branch_draws_its_own_channel_dropout():
    torch.manual_seed(0)
    head = SegmentationHead(64, 1, dropout=0.5).train()
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (output == 0).all(-1).all(-1)  # channels zeroed entirely

        return hook

    head.drop_linear.register_forward_hook(record("lin"))
    head.drop_nonlinear.register_forward_hook(record("mlp"))
    head(torch.ones(1, 64, 2, 2))
    assert seen["lin"].any() and seen["mlp"].any()  # whole channels dropped
    assert not torch.equal(seen["lin"], seen["mlp"])  # independently in each branch


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_projection_is_unit_length_for_maps_and_rows(dtype):
    z = ProjectionHead(5)
    atol = 1e-6 if dtype == torch.float32 else 2**-7  # bf16 output: unit length to its rounding
    with amp(dtype):
        maps, rows = z(torch.randn(2, 5, 3, 4)), z(torch.randn(7, 5))
    assert maps.dtype == rows.dtype == dtype
    assert torch.allclose(maps.float().norm(dim=1), torch.ones(2, 3, 4), atol=atol)
    assert torch.allclose(rows.float().norm(dim=1), torch.ones(7), atol=atol)


def test_heads_under_bf16_autocast_follow_fp32_and_train():
    """Mixed precision as the trainer runs it: mining features stay exact fp32 (they decide positives); codes, S' and
    Z come out in bf16 within its rounding of fp32; the gradients reach the fp32 weights in fp32."""
    torch.manual_seed(0)
    heads = HPHeads(16, 8).eval()
    feats = torch.randn(2, 16, 3, 3)
    seg = heads.seg(feats)
    ref = {"f": heads.mining_features(feats), "s": heads.momentum_codes(feats), "z": heads.proj(seg)}
    with amp(torch.bfloat16):
        codes = heads.seg(feats)
        got = {"f": heads.mining_features(feats), "s": heads.momentum_codes(feats), "z": heads.proj(codes)}
    assert got["f"].dtype == torch.float32 and torch.equal(got["f"], ref["f"])
    for key in ("s", "z"):
        assert torch.allclose(got[key].float(), ref[key], atol=2**-6), key
    got["z"].float().sum().backward()
    weights = [heads.seg.linear.weight, heads.proj.fc.weight]
    assert all(w.grad is not None and w.grad.dtype == torch.float32 and w.grad.abs().sum() > 0 for w in weights)


def test_ema_update_formula_and_initial_copy():
    s = SegmentationHead(4, 3)
    ema = momentum_copy(s)
    assert all(torch.equal(a, b) for a, b in zip(ema.parameters(), s.parameters(), strict=True))
    assert not any(p.requires_grad for p in ema.parameters())
    before = [p.clone() for p in ema.parameters()]
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
    ema_update(ema, s, m=0.99)
    for old, new, cur in zip(before, ema.parameters(), s.parameters(), strict=True):
        assert torch.allclose(new, 0.99 * old + 0.01 * cur, atol=1e-6)


def test_code_form_drops_mining_features_and_paper_form_does_not():
    """§2.11 item 6: in the code form, mining features and S' outputs are channel-dropped too."""
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 3, 3)
    code, paper = HPHeads(16, 8, form="code").train(), HPHeads(16, 8, form="paper").train()
    f_code = code.mining_features(feats)
    assert torch.allclose(f_code.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)
    assert (f_code == 0).all(-1).all(-1).any()  # some channels zeroed
    assert torch.allclose(paper.mining_features(feats), torch.nn.functional.normalize(feats, dim=1))
    assert not paper.momentum_codes(feats).requires_grad


def test_bad_form_is_an_error():
    with pytest.raises(ValueError, match="'code' or 'paper'"):
        SegmentationHead(4, 2, form="poster")
