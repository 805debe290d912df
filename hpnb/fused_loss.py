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
keeps, per row, lse, the counts and `kept`, and, while they fit in `MASK_BUDGET` (below), the three masks packed into
one byte per (anchor, column), so the backward recomputes the two logits products but not the two similarity products
that decide the masks.

`compile=True` runs the tile kernels through `torch.compile` (Inductor: C++ on the CPU, Triton on CUDA).

Precision: the block computes in at least fp32 (`_acc_dtype`) whatever the inputs' dtype and the caller's autocast:
logits, log-sum-exp, sums and gradients in fp32 for bf16 or fp16 z (returned to z in its own dtype), the similarities
that decide the masks in exact fp32 (`hpnb.utils.exact_fp32`, as `hpnb.positives.positive_block`), and the counts
|P_ag|, |P_sp| in int64 (a bf16 sum is exact only up to 256).

Memory (issue 21, F7). The packed masks of all blocks of an iteration take NB² bytes (2.3 GiB at B = 64, N = 784),
alive from the forward to the backward: they are kept only while NB² ≤ `MASK_BUDGET` (64 MiB: NB ≤ 8192, B ≤ 10 at
N = 784), otherwise the backward recomputes them from the mining vectors (the same masks, bit for bit). With NB = B·N,
R = chunk_images·N rows per block (R' those of the last block), T = min(tile, NB) columns, S = 2 streams (Φ and Ψ; 1
without LHP), K the code size, G = NB·K·4 bytes (one fp32 gradient of z), W(r) = 20·r·T + S·r·K·4 (a block's working
set: the bool and float masks, logits and temporaries of a tile, 20 bytes per entry, and the anchor rows / τ) and
M = NB² when the masks are kept, else 0, hp_loss's fused path (R's term on) peaks, above its fp32 inputs, at

    bytes = max(M + W(R),                    forward (an upper bound)
                M + (1 + S)·G + W(R'),       backward of the last block, autograd's first: z's buffer (holding R's
                                             gradient) and the block's S gradients
                M − R'·NB + 2·S·G + W(R))    each earlier block: S buffers and S gradients, the last block's masks
            + 48·NB                          released; lse, counts and flags per row

(`memory_bytes`; the third case with more than one block). At the COCO preset (B = 64, N = 784, chunk 4, tile
1024, K = 512) that is 0.46 GiB with the masks recomputed (the default there) and 2.7 GiB if they were kept;
`benchmarks/fused_memory.py` measures it on the CPU at small B (within 1 % of the formula: results_fused_memory.txt).
bf16 or fp16 inputs add their fp32 copies of the anchor rows and the tile's columns and the final casts of the
gradients (S·R·K·4 + T·K·4 + S·NB·K·2 bytes)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from hpnb.utils import autocast, exact_fp32

MASK_BUDGET = 64 * 2**20  # bytes: the packed masks of one iteration (NB² bytes) are kept for the backward up to this


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


def keeps_masks(nb: int) -> bool:
    """True when the packed masks of every block of an iteration, one byte per (anchor, column) = NB² bytes, fit in
    `MASK_BUDGET`: the forward keeps them for the backward; above it the backward recomputes them (module docstring)."""
    return nb * nb <= MASK_BUDGET


def memory_bytes(
    b: int,
    n: int,
    k: int,
    chunk_images: int = 4,
    tile: int = 1024,
    streams: int = 2,
    keep: bool | None = None,
) -> int:
    """The module docstring's peak-memory formula of hp_loss's fused path, forward + backward, above its fp32 inputs
    (bytes), for B images of N patches, K-dim codes, `streams` S = 2 with LHP (Φ, Ψ) or 1, and `keep` the packed masks
    (None: as `keeps_masks` decides)."""
    nb, cols, e = b * n, min(tile, b * n), 4
    blocks = -(-b // chunk_images)
    rows, last = min(chunk_images, b) * n, (b - (blocks - 1) * chunk_images) * n  # a full block, the last block
    keep = keeps_masks(nb) if keep is None else keep
    masks = nb * nb if keep else 0
    grad = nb * k * e  # one (NB, K) fp32 gradient
    work = lambda r: 20 * r * cols + streams * r * k * e  # noqa: E731  (a block's tile temporaries and rows / τ)
    phases = [masks + work(rows), masks + (1 + streams) * grad + work(last)]  # forward; the last block's backward
    if blocks > 1:  # earlier blocks: autograd's buffers and one block's gradients, the last block's masks released
        phases.append(masks - keep * last * nb + 2 * streams * grad + work(rows))
    return max(phases) + 48 * nb


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the block computes and accumulates in: the input's, at least fp32 (bf16 sums drift, lose integers)."""
    return torch.promote_types(dtype, torch.float32)


def _sim(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Eq. 3–4 similarities rows·colsᵀ in exact fp32 at least (no autocast, no TF32), as `positive_block`."""
    dtype = _acc_dtype(rows.dtype)
    with exact_fp32(rows.device):
        return rows.to(dtype) @ cols.to(dtype).T


def _masks(rows_f, cols_f, c_rows, c_cols, rows_s, cols_s, csp_rows, csp_cols, neg, diag, symmetric: bool):
    """Bool (R, T) masks of one tile: P_ag, P_sp (or None) and the denominator set D. `neg` is R_ρ's (nimg, N, T) view
    of the tile; `diag` the (row, column) positions of the anchors themselves inside the tile (excluded)."""
    sim = _sim(rows_f, cols_f)
    p_ag = sim > c_rows[:, None]
    if symmetric:
        p_ag |= sim > c_cols[None, :]
    p_ag[diag] = False
    del sim
    p_sp = None
    if rows_s is not None:
        sim_s = _sim(rows_s, cols_s)
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


def _pack(p_ag: torch.Tensor, p_sp: torch.Tensor | None, den: torch.Tensor) -> torch.Tensor:
    """The three bool masks of a tile as one uint8 per entry (bits `_AG`, `_SP`, `_DEN`)."""
    bits = p_ag.to(torch.uint8) | (den.to(torch.uint8) << 2)
    if p_sp is not None:
        bits |= p_sp.to(torch.uint8) << 1
    return bits


class _Stream:
    """Column tiles of one block: (j0, j1, P_ag, P_sp, D) as bool (R, T) masks. Without `packed` the masks are computed
    from the mining vectors (and, with `keep`, packed into `store`, one byte per entry, for the caller to keep); with
    `packed` (the forward's bytes) they are unpacked instead of recomputing the two similarity products."""

    def __init__(self, data: BlockData, b0: int, b1: int, packed: torch.Tensor | None = None, keep: bool = False):
        self.data, self.r0, self.r1 = data, b0 * data.n, b1 * data.n
        self.nimg = b1 - b0
        self.nb = data.f.shape[0]
        self.packed, self.keep = packed, keep
        self.store: torch.Tensor | None = None

    def __iter__(self):
        d, r0, r1 = self.data, self.r0, self.r1
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
                self.store = _pack(p_ag, p_sp, den) if self.keep else None
            else:
                bits = self.packed[:, j0:j1]
                p_ag, den = (bits & _AG).bool(), (bits & _DEN).bool()
                p_sp = (bits & _SP).bool() if has_sp else None
            yield j0, j1, p_ag, p_sp, den


def _flat(z: torch.Tensor, z_mix: torch.Tensor | None) -> list[torch.Tensor]:
    """The streams of a block as (NB, K) views: z (Φ), and z_mix (Ψ) when given."""
    return [t.reshape(-1, t.shape[-1]) for t in (z, z_mix) if t is not None]


def _as_float(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask as 0/1 in `dtype` (None stays None)."""
    return mask.to(dtype) if mask is not None else None


class FusedCodeBlock(torch.autograd.Function):
    """Partial sums (6, nimg) of anchor images b0..b1, laid out as `hpnb.losses._Block` returns them (Φ_ag, Φ_sp,
    Ψ_ag, Ψ_sp sums of w·log p per image, then |w_ag|, |w_sp| per image) in at least fp32, and |P_ag|, |P_sp| per
    anchor row (int64)."""

    @staticmethod
    def forward(ctx, z, z_mix, data: BlockData, b0: int, b1: int):
        with autocast(z.device, enabled=False):  # the dtypes are chosen here (module docstring), not by autocast
            return _forward(ctx, z, z_mix, data, b0, b1)

    @staticmethod
    def backward(ctx, grad, _g_ag, _g_sp):
        z, z_mix, lses, kept, cnt_ag, cnt_sp, packed = ctx.saved_tensors
        with autocast(z.device, enabled=False):
            g_z, g_mix = _backward(ctx.data, *ctx.b, z, z_mix, grad, lses, kept, cnt_ag, cnt_sp, packed)
        return g_z, g_mix, None, None, None


def _forward(ctx, z, z_mix, data: BlockData, b0: int, b1: int):
    """FusedCodeBlock.forward: one pass over the column tiles (online log-sum-exp, Σ P·ℓ, counts)."""
    fwd, _ = _kernels(data.compile)
    n, nimg, tau, nb = data.n, b1 - b0, data.tau, data.f.shape[0]
    acc = _acc_dtype(z.dtype)
    r0, r1 = b0 * n, b1 * n
    nrows = r1 - r0
    vecs = _flat(z, z_mix)
    state = [
        dict(
            rows=vec[r0:r1].to(acc) / tau,  # ℓ = (a / τ) · c: the 1/τ folded into the anchors once
            mx=torch.full((nrows,), float("-inf"), dtype=acc, device=z.device),
            sm=torch.zeros(nrows, dtype=acc, device=z.device),
            ag=torch.zeros(nrows, dtype=acc, device=z.device),
            sp=torch.zeros(nrows, dtype=acc, device=z.device),
        )
        for vec in vecs
    ]
    w_ag = torch.zeros(nrows, dtype=torch.int64, device=z.device)  # |P_ag|, |P_sp| per row: counted in integers
    w_sp = torch.zeros_like(w_ag)
    keep = keeps_masks(nb)
    packed = torch.empty(nrows, nb, dtype=torch.uint8, device=z.device) if keep else None
    stream = _Stream(data, b0, b1, keep=keep)
    for j0, j1, p_ag, p_sp, den in stream:
        if packed is not None:
            packed[:, j0:j1] = stream.store
        f_ag, f_sp = _as_float(p_ag, acc), _as_float(p_sp, acc)
        w_ag += f_ag.sum(1).long()  # a tile's count is exact in fp32 (T < 2^24), the running count in int64
        if f_sp is not None:
            w_sp += f_sp.sum(1).long()
        for vec, a in zip(vecs, state, strict=True):
            logits = a["rows"] @ vec[j0:j1].to(acc).T
            a["mx"], a["sm"], s_ag, s_sp = fwd(logits, den, f_ag, f_sp, a["mx"], a["sm"])
            a["ag"] += s_ag
            if s_sp is not None:
                a["sp"] += s_sp
        del p_ag, p_sp, den, f_ag, f_sp, logits  # not alive while the next tile's masks are built
    kept = w_ag > 0
    cnt_ag, cnt_sp = w_ag.to(acc), w_sp.to(acc)
    out, lses = [], []
    for a in state:
        lse = torch.where(a["sm"] > 0, a["mx"] + torch.log(a["sm"]), torch.zeros_like(a["sm"]))
        lses.append(lse)
        for s, cnt in ((a["ag"], cnt_ag), (a["sp"], cnt_sp)):
            out.append(torch.where(kept, s - cnt * lse, torch.zeros_like(s)).reshape(nimg, -1).sum(1))
    if z_mix is None:
        out += [torch.zeros_like(out[0])] * 2
    per_img = lambda w: (w * kept).reshape(nimg, -1).sum(1).to(acc)  # noqa: E731  (integer sums, then a float)
    out += [per_img(w_ag), per_img(w_sp)]
    ctx.save_for_backward(z, z_mix, torch.stack(lses), kept, cnt_ag, cnt_sp, packed)
    ctx.data, ctx.b = data, (b0, b1)
    ctx.mark_non_differentiable(w_ag, w_sp)
    return torch.stack(out), w_ag, w_sp


def _backward(data: BlockData, b0: int, b1: int, z, z_mix, grad, lses, kept, cnt_ag, cnt_sp, packed):
    """FusedCodeBlock.backward: the gradients of z and z_mix, tile by tile, masks unpacked or recomputed."""
    _, bwd = _kernels(data.compile)
    n, tau, acc = data.n, data.tau, lses.dtype
    r0, r1 = b0 * n, b1 * n
    keptf = kept.to(acc) / tau  # the 1/τ of ℓ rides on the upstream weights
    vecs = _flat(z, z_mix)
    grads = [torch.zeros(v.shape, dtype=acc, device=v.device) for v in vecs]
    grad = grad.to(acc)
    per_row = lambda g: g.repeat_interleave(n) * keptf  # noqa: E731  (one value per image -> its kept rows)
    coef = []
    for k, vec in enumerate(vecs):
        rows = vec[r0:r1].to(acc)
        g_ag, g_sp = per_row(grad[2 * k]), per_row(grad[2 * k + 1])
        coef.append((rows, rows / tau, g_ag, g_sp, g_ag * cnt_ag + g_sp * cnt_sp))
    for j0, j1, p_ag, p_sp, den in _Stream(data, b0, b1, packed):
        f_ag, f_sp = _as_float(p_ag, acc), _as_float(p_sp, acc)
        for vec, gvec, lse, (rows, rows_t, g_ag, g_sp, big_u) in zip(vecs, grads, lses, coef, strict=True):
            cols = vec[j0:j1].to(acc)
            dlog = bwd(rows_t @ cols.T, den, f_ag, f_sp, lse, g_ag, g_sp, big_u)
            gvec[r0:r1].addmm_(dlog, cols)
            gvec[j0:j1].addmm_(dlog.T, rows)
        del p_ag, p_sp, den, f_ag, f_sp, dlog  # not alive while the next tile's masks are built
    g_z = grads[0].to(z.dtype).reshape(z.shape)
    g_mix = grads[1].to(z_mix.dtype).reshape(z_mix.shape) if z_mix is not None else None
    return g_z, g_mix


def fused_block(z, z_mix, data: BlockData, b0: int, b1: int):
    """(sums (6, nimg) in at least fp32, |P_ag| per anchor row, |P_sp| per anchor row) of anchor images b0..b1."""
    return FusedCodeBlock.apply(z, z_mix, data, b0, b1)
