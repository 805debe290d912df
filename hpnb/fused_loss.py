"""The code-form HP loss block in one streaming pass (issue 14): masks, masked log-sum-exp and positive-weighted sums
computed tile by tile over the NB columns, the backward recomputed tile by tile (spec §2.4–2.8, paper Eq. 3–6, 10).

For a block of anchor rows (the N patches of `chunk_images` images, R rows) and a tile of T columns:

    P_ag = {sim_f > c_i ∨ sim_f > c_j} \\ {i}      (Eq. 3; one-sided without the second term)
    P_sp = the same on the momentum codes s'          (Eq. 4)
    D    = (P_ag ∪ R_ρ) \\ {i}                         (the code form's one denominator set)
    ℓ    = z_i · z_j / τ                              (Φ; Ψ: z^mix_i · z^mix_j / τ)

The forward keeps, per row, a running max and sum for log Σ_{j∈D} exp ℓ_ij (the online log-sum-exp), Σ_j P ℓ_ij and
|P|. With lse_i known, Σ_j w_ij log p_ij = Σ_j w_ij ℓ_ij − |w_i| lse_i, which is what `hpnb.losses` computes from the
whole (R, NB) block. The backward recomputes each tile and uses ∂/∂ℓ_ij = u_ij − U_i p_ij with u = g_ag·P_ag + g_sp·P_sp
the upstream weights and p the softmax over D. Only one tile of float (R, T) tensors is alive at a time. The forward
keeps, per row, lse, the counts and `kept`, and the three masks packed into one byte per (anchor, column), so the
backward recomputes the two logits products but not the two similarity products that decide the masks.

`compile=True` runs the tile kernels through `torch.compile` (Inductor: C++ on the CPU, Triton on CUDA)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass
class BlockData:
    """What every block of one iteration shares: the flat (NB, ·) mining vectors, criteria and the ρ draw."""

    f: torch.Tensor  # (NB, C) mining features (no grad)
    c_ag: torch.Tensor  # (NB,) Eq. 2 criteria against Q_ag
    s: torch.Tensor | None  # (NB, K) momentum codes, or None without P_sp
    c_sp: torch.Tensor | None  # (NB,)
    neg: torch.Tensor  # (N, NB) bool: R ~ Bernoulli(ρ), the same rows for every anchor image
    n: int  # patches per image
    tau: float
    symmetric: bool
    tile: int  # columns per tile
    compile: bool = False


def _masks(rows_f, cols_f, c_rows, c_cols, rows_s, cols_s, csp_rows, csp_cols, neg, diag, symmetric: bool):
    """Bool (R, T) masks of one tile: P_ag, P_sp (or None) and the denominator set D. `neg` is R_ρ's (nimg, N, T) view
    of the tile; `diag` the (row, column) positions of the anchors themselves inside the tile (excluded)."""
    sim = rows_f @ cols_f.T
    p_ag = sim > c_rows[:, None]
    if symmetric:
        p_ag |= sim > c_cols[None, :]
    p_ag[diag] = False
    p_sp = None
    if rows_s is not None:
        sim_s = rows_s @ cols_s.T
        p_sp = sim_s > csp_rows[:, None]
        if symmetric:
            p_sp |= sim_s > csp_cols[None, :]
        p_sp[diag] = False
    den = (p_ag.view(-1, *neg.shape[1:]) | neg).view(p_ag.shape)
    den[diag] = False
    return p_ag, p_sp, den


def _forward_tile(logits, d, p_ag, p_sp, run_max, run_sum):
    """Fold one tile into the running (max, sum) of the masked log-sum-exp; Σ P·ℓ of the tile for P_ag and P_sp
    (`p_ag`, `p_sp`: the masks as 0/1 floats)."""
    masked = logits.masked_fill(~d, float("-inf"))
    new_max = torch.maximum(run_max, masked.amax(dim=1))
    safe = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
    run_sum = run_sum * torch.exp(run_max - safe) + masked.sub_(safe[:, None]).exp_().sum(dim=1)
    a_ag = torch.einsum("ij,ij->i", logits, p_ag)
    a_sp = torch.einsum("ij,ij->i", logits, p_sp) if p_sp is not None else None
    return new_max, run_sum, a_ag, a_sp


def _backward_tile(logits, d, p_ag, p_sp, lse, g_ag, g_sp, big_u):
    """∂(Σ_j u_ij log p_ij)/∂ℓ_ij of one tile, u − U·p, computed in place in `logits` (which it consumes).

    u = g_ag·P_ag + g_sp·P_sp (masks as 0/1 floats), U = Σ_j u_ij, p the softmax over D; g and U carry `kept` and
    the 1/τ of ℓ = a·c/τ, so the result is the gradient with respect to a·c."""
    out = logits.sub_(lse[:, None]).exp_().masked_fill_(~d, 0.0).mul_(-big_u[:, None])
    out.addcmul_(p_ag, g_ag[:, None])
    if p_sp is not None:
        out.addcmul_(p_sp, g_sp[:, None])
    return out


@functools.cache
def _kernels(compiled: bool):
    """The tile kernels, eager or through torch.compile (built once per process)."""
    if not compiled:
        return _forward_tile, _backward_tile
    return torch.compile(_forward_tile, dynamic=True), torch.compile(_backward_tile, dynamic=True)


# bits of the packed masks the forward keeps for the backward (one byte per (anchor, column) of a block)
_AG, _SP, _DEN = 1, 2, 4


class _Stream:
    """Column tiles of one block: (j0, j1, P_ag, P_sp, D) with P as 0/1 floats and D bool. The forward computes the
    masks from the mining vectors and packs them into one byte per entry (`packed`); the backward unpacks them
    instead of recomputing the two similarity products."""

    def __init__(self, data: BlockData, b0: int, b1: int, packed: torch.Tensor | None = None):
        self.data, self.r0, self.r1 = data, b0 * data.n, b1 * data.n
        self.nimg = b1 - b0
        self.nb = data.f.shape[0]
        self.packed = packed

    def __iter__(self):
        d, r0, r1 = self.data, self.r0, self.r1
        dtype = d.f.dtype
        has_sp = d.s is not None
        for j0 in range(0, self.nb, d.tile):
            j1 = min(self.nb, j0 + d.tile)
            lo, hi = max(r0, j0), min(r1, j1)  # anchors that are also columns of this tile
            idx = torch.arange(lo, hi, device=d.f.device) if lo < hi else torch.arange(0, device=d.f.device)
            diag = (idx - r0, idx - j0)
            if self.packed is None:
                p_ag, p_sp, den = _masks(
                    d.f[r0:r1],
                    d.f[j0:j1],
                    d.c_ag[r0:r1],
                    d.c_ag[j0:j1],
                    d.s[r0:r1] if has_sp else None,
                    d.s[j0:j1] if has_sp else None,
                    d.c_sp[r0:r1] if has_sp else None,
                    d.c_sp[j0:j1] if has_sp else None,
                    d.neg[None, :, j0:j1],
                    diag,
                    d.symmetric,
                )
                self.store = p_ag.to(torch.uint8) | (den.to(torch.uint8) << 2)
                if p_sp is not None:
                    self.store |= p_sp.to(torch.uint8) << 1
            else:
                bits = self.packed[:, j0:j1]
                p_ag, den = (bits & _AG).bool(), (bits & _DEN).bool()
                p_sp = (bits & _SP).bool() if has_sp else None
            yield j0, j1, p_ag.to(dtype), p_sp.to(dtype) if p_sp is not None else None, den


class FusedCodeBlock(torch.autograd.Function):
    """Partial sums (6, nimg) of anchor images b0..b1, laid out as `hpnb.losses._Block` returns them (Φ_ag, Φ_sp,
    Ψ_ag, Ψ_sp sums of w·log p per image, then |w_ag|, |w_sp| per image), and |P_ag|, |P_sp| per anchor row."""

    @staticmethod
    def forward(ctx, z, z_mix, data: BlockData, b0: int, b1: int):
        fwd, _ = _kernels(data.compile)
        n, nimg, tau = data.n, b1 - b0, data.tau
        zf = z.reshape(-1, z.shape[-1])
        streams = [zf] + ([z_mix.reshape(-1, z_mix.shape[-1])] if z_mix is not None else [])
        r0, r1 = b0 * n, b1 * n
        nrows = r1 - r0
        acc = [
            dict(
                rows=vec[r0:r1] / tau,  # ℓ = (a / τ) · c: the 1/τ folded into the anchors once
                mx=zf.new_full((nrows,), float("-inf")),
                sm=zf.new_zeros(nrows),
                ag=zf.new_zeros(nrows),
                sp=zf.new_zeros(nrows),
            )
            for vec in streams
        ]
        w_ag = zf.new_zeros(nrows)
        w_sp = zf.new_zeros(nrows)
        packed = torch.empty(nrows, data.f.shape[0], dtype=torch.uint8, device=z.device)
        stream = _Stream(data, b0, b1)
        for j0, j1, p_ag, p_sp, den in stream:
            packed[:, j0:j1] = stream.store
            w_ag += p_ag.sum(1)
            if p_sp is not None:
                w_sp += p_sp.sum(1)
            for vec, a in zip(streams, acc, strict=True):
                logits = a["rows"] @ vec[j0:j1].T
                a["mx"], a["sm"], s_ag, s_sp = fwd(logits, den, p_ag, p_sp, a["mx"], a["sm"])
                a["ag"] += s_ag
                if s_sp is not None:
                    a["sp"] += s_sp
        kept = w_ag > 0
        cnt_ag, cnt_sp = w_ag, w_sp
        out, lses = [], []
        for a in acc:
            lse = torch.where(a["sm"] > 0, a["mx"] + torch.log(a["sm"]), torch.zeros_like(a["sm"]))
            lses.append(lse)
            for s, cnt in ((a["ag"], cnt_ag), (a["sp"], cnt_sp)):
                out.append(torch.where(kept, s - cnt * lse, torch.zeros_like(s)).reshape(nimg, -1).sum(1))
        if z_mix is None:
            out += [torch.zeros_like(out[0])] * 2
        keptf = kept.to(zf.dtype)
        out += [(cnt_ag * keptf).reshape(nimg, -1).sum(1), (cnt_sp * keptf).reshape(nimg, -1).sum(1)]
        ctx.save_for_backward(z, z_mix, torch.stack(lses), kept, cnt_ag, cnt_sp, packed)
        ctx.data, ctx.b = data, (b0, b1)
        counts_ag, counts_sp = w_ag.round().long(), w_sp.round().long()
        ctx.mark_non_differentiable(counts_ag, counts_sp)
        return torch.stack(out), counts_ag, counts_sp

    @staticmethod
    def backward(ctx, grad, _g_ag, _g_sp):
        z, z_mix, lses, kept, cnt_ag, cnt_sp, packed = ctx.saved_tensors
        data, (b0, b1) = ctx.data, ctx.b
        _, bwd = _kernels(data.compile)
        n, tau = data.n, data.tau
        r0, r1 = b0 * n, b1 * n
        keptf = kept.to(z.dtype) / tau  # the 1/τ of ℓ rides on the upstream weights
        vecs = [z.reshape(-1, z.shape[-1])] + ([z_mix.reshape(-1, z_mix.shape[-1])] if z_mix is not None else [])
        grads = [torch.zeros_like(v) for v in vecs]
        per_row = lambda g: g.repeat_interleave(n) * keptf  # noqa: E731  (one value per image -> its kept rows)
        coef = []
        for k, vec in enumerate(vecs):
            g_ag, g_sp = per_row(grad[2 * k]), per_row(grad[2 * k + 1])
            coef.append((vec[r0:r1] / tau, g_ag, g_sp, g_ag * cnt_ag + g_sp * cnt_sp))
        for j0, j1, p_ag, p_sp, den in _Stream(data, b0, b1, packed):
            for vec, gvec, lse, (rows_t, g_ag, g_sp, big_u) in zip(vecs, grads, lses, coef, strict=True):
                cols = vec[j0:j1]
                dlog = bwd(rows_t @ cols.T, den, p_ag, p_sp, lse, g_ag, g_sp, big_u)
                gvec[r0:r1].addmm_(dlog, cols)
                gvec[j0:j1].addmm_(dlog.T, vec[r0:r1])
        g_z = grads[0].reshape(z.shape)
        g_mix = grads[1].reshape(z_mix.shape) if z_mix is not None else None
        return g_z, g_mix, None, None, None


def fused_block(z, z_mix, data: BlockData, b0: int, b1: int):
    """(sums (6, nimg), |P_ag| per anchor row, |P_sp| per anchor row) of anchor images b0..b1, streamed."""
    return FusedCodeBlock.apply(z, z_mix, data, b0, b1)
