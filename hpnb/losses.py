"""HP's objective (paper §3.3–3.4, Eq. 5, 6, 10, 11; spec §2.4–2.9) in the official-code form and the paper form.

All anchors of one anchor image (N patches) are compared with every patch of the batch (NB = B·N) in one
(N·chunk, NB) block; masks are boolean; each block is recomputed in the backward pass (checkpointing), so peak
memory holds one block, not B of them.

form="code" (default, what produced the published numbers):
  one denominator set D(i) = (P_ag(i) ∪ R(i)) \\ {i}, R ~ Bernoulli(ρ) of shape (N, NB) drawn once per
  iteration and reused for every anchor image; positives weighted w_ij = 1[P_ag] + λ·1[P_sp]; anchors without a
  task-agnostic positive dropped; per image a pair-level mean Φ_b = −(τ/0.07) Σ w·log p / Σ w; Ψ_b the same
  with mixed-vs-mixed logits; L = (1/2B) Σ_b (Φ_b + Ψ_b) + α·R.
form="paper": Eq. 5 per anchor with separate ρ-samples N_ag, N_sp of the non-positives and denominators N ∪ P,
  Ψ with the mixed anchor against plain positives, L_i = (Φ_ag + Ψ_ag) + λ(Φ_sp + Ψ_sp) + α·R_i, mean over anchors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from hpnb.fused_loss import BlockData, fused_block
from hpnb.positives import positive_block, window_index
from hpnb.utils import device_generator


@dataclass
class LossConfig:
    """Hyper-parameters and the ablation switches of Table 4 / Table 5."""

    form: str = "code"  # "code" | "paper"
    tau: float = 0.8  # τ
    rho: float = 0.02  # ρ: share of the batch drawn into the denominator / negative set
    alpha: float = 0.05  # α: weight of the consistency regulariser R
    base_temperature: float = 0.07  # code form: the loss is multiplied by τ / 0.07
    use_sp: bool = True  # Table 4: task-specific GHP (P_sp from the momentum head)
    use_lhp: bool = True  # Table 4: local hidden positives (Ψ)
    symmetric: bool = True  # Table 4: symmetric selection (Eq. 3–4) vs one-sided
    use_reg: bool = True  # Table 4: consistency regulariser
    objective: str = "hp"  # "hp" | "self" (Table 4(g): plain self-contrastive Eq. 1)
    propagation: str = "gradient"  # Table 5: "gradient" (mix features, shipped) | "loss" (propagate the loss)
    chunk_images: int = 4  # anchor images per block
    checkpoint: bool = True  # recompute blocks in the backward pass (memory ∝ one block)
    fused: str = "auto"  # code form: "on" streams each block in column tiles (hpnb.fused_loss), "compile" the same
    # through torch.compile, "off" the reference path below; "auto" = "on" on the CPU (measured exact and faster:
    # benchmarks/README.md), "off" elsewhere until the GPU table is measured. Other forms take the reference path.
    tile: int = 1024  # columns per tile of the fused path

    def __post_init__(self):
        for name, value, allowed in (
            ("form", self.form, ("code", "paper")),
            ("objective", self.objective, ("hp", "self")),
            ("propagation", self.propagation, ("gradient", "loss")),
            ("fused", self.fused, ("auto", "on", "off", "compile")),
        ):
            if value not in allowed:
                raise ValueError(f"LossConfig.{name} must be one of {allowed}, found {value!r}")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"LossConfig.rho must lie in [0, 1], found {self.rho}")
        if self.tile < 1:
            raise ValueError(f"LossConfig.tile must be a positive number of columns, found {self.tile}")

    @property
    def streams(self) -> bool:
        """True when hp_loss takes the fused path: the code form of HP with gradient propagation, fused not "off"."""
        return self.fused != "off" and self.form == "code" and self.objective == "hp" and self.propagation == "gradient"

    def fused_on(self, device: torch.device) -> bool:
        """True when hp_loss streams on this device: `streams`, and "auto" only on the CPU."""
        return self.streams and (self.fused != "auto" or torch.device(device).type == "cpu")


@dataclass
class LossInputs:
    """Per-patch vectors of one iteration, (B, N, ·); unit length where the paper uses cosine similarity."""

    z: torch.Tensor  # (B, N, K) L2norm(Z(S(x))), with grad
    f: torch.Tensor | None = None  # (B, N, C) mining features (detached)
    c_ag: torch.Tensor | None = None  # (B, N) Eq. 2 criteria against Q_ag
    s_ema: torch.Tensor | None = None  # (B, N, K) momentum codes (no grad)
    c_sp: torch.Tensor | None = None  # (B, N) criteria against Q_sp
    z_mix: torch.Tensor | None = None  # (B, N, K) L2norm(Z(s_mix)), with grad (gradient propagation)
    z_aug: torch.Tensor | None = None  # (B, N, K) projections of the photometrically augmented view
    lhp: tuple[torch.Tensor, torch.Tensor] | None = None  # (weights (B,N,9), denom (B,N)) for loss propagation
    grid: tuple[int, int] | None = None  # (h, w) of the patch grid, needed for loss propagation

    def float(self) -> LossInputs:
        """The same inputs with every floating tensor in fp32 (what leaves an autocast region, cast on purpose)."""
        cast = lambda t: t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        return dataclasses.replace(
            self,
            **{k: cast(getattr(self, k)) for k in ("z", "f", "c_ag", "s_ema", "c_sp", "z_mix", "z_aug")},
            lhp=tuple(cast(t) for t in self.lhp) if self.lhp is not None else None,
        )


@dataclass
class LossParts:
    """The total and the parts a notebook or a log shows."""

    total: torch.Tensor
    phi: torch.Tensor  # Φ: the GHP term (code: combined weighted mean; paper: Φ_ag + λΦ_sp)
    psi: torch.Tensor  # Ψ: the LHP term
    reg: torch.Tensor  # R
    phi_ag: float = float("nan")  # diagnostics, no grad
    phi_sp: float = float("nan")
    n_pos_ag: torch.Tensor | None = None  # (B, N) number of task-agnostic positives per anchor
    n_pos_sp: torch.Tensor | None = None  # (B, N)
    dropped: int = 0  # anchors without a task-agnostic positive
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Floats for logging."""
        val = lambda t: float(t.detach())  # noqa: E731
        return {
            "loss": val(self.total),
            "phi": val(self.phi),
            "psi": val(self.psi),
            "reg": val(self.reg),
            "phi_ag": self.phi_ag,
            "phi_sp": self.phi_sp,
            "dropped": self.dropped,
            "pos_ag_mean": float(self.n_pos_ag.float().mean()) if self.n_pos_ag is not None else float("nan"),
        }


def lambda_schedule(t: int, total: int, warmup: int) -> float:
    """λ (spec §2.9): 0 while t ≤ warmup, then (t − warmup)/(total − warmup), reaching ≈1 at the last iteration."""
    if t <= warmup or total <= warmup:
        return 0.0
    return min(1.0, (t - warmup) / (total - warmup))


def draw_negative_mask(
    n: int, nb: int, rho: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """The code form's R: one Bernoulli(ρ) bool mask (N, NB) per iteration, shared by every anchor image."""
    device = device or (generator.device if generator is not None else "cpu")
    return torch.rand(n, nb, generator=generator, device=device) < rho  # generator on `device` (device_generator)


def consistency(z: torch.Tensor, z_aug: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """R per patch: plain (non-squared) Euclidean distance ‖z − z_aug + eps‖ (nn.PairwiseDistance), shape (B, N)."""
    return (z - z_aug + eps).norm(dim=-1)


def _masked_log_prob(logits: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """log p_ij = ℓ_ij − log Σ_{k ∈ D(i)} exp ℓ_ik (rows with an empty D give 0, and are never used)."""
    lse = logits.masked_fill(~denom, float("-inf")).logsumexp(dim=1, keepdim=True)
    return logits - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))


def _self_mask(n_rows: int, nb: int, offset: int, device) -> torch.Tensor:
    """Bool (n_rows, NB), True at each anchor's own column."""
    eye = torch.zeros(n_rows, nb, dtype=torch.bool, device=device)
    rows = torch.arange(n_rows, device=device)
    eye[rows, rows + offset] = True
    return eye


def _shift_rows(z: torch.Tensor, b0: int, b1: int, grid: tuple[int, int], k: int) -> torch.Tensor:
    """Rows of anchor images b0..b1 replaced by their k-th 3×3 window neighbour (zeros outside the grid)."""
    idx, valid = window_index(*grid, device=z.device)
    rows = z[b0:b1][:, idx[:, k]] * valid[:, k, None].to(z.dtype)  # (nimg, N, K)
    return rows.reshape(-1, z.shape[-1])


class _Block:
    """Everything one block of anchor images needs; `__call__` returns its differentiable partial sums."""

    def __init__(
        self,
        cfg: LossConfig,
        inp: LossInputs,
        neg: torch.Tensor | None,
        seed: int | None,
        paper_negs: tuple[torch.Tensor, torch.Tensor] | None,
    ):
        self.cfg, self.inp, self.neg, self.seed, self.paper_negs = cfg, inp, neg, seed, paper_negs
        self.b, self.n = inp.z.shape[:2]
        self.nb = self.b * self.n

    def masks(self, b0: int, b1: int):
        """Bool masks of the block: P_ag, P_sp (or None), the anchor's own column."""
        cfg, inp, n, nb = self.cfg, self.inp, self.n, self.nb
        r0, r1 = b0 * n, b1 * n
        flat = lambda t: t.reshape(nb, -1)  # noqa: E731
        eye = _self_mask(r1 - r0, nb, r0, inp.z.device)
        if cfg.objective == "self":
            return None, None, eye
        f = flat(inp.f)
        p_ag = positive_block(f[r0:r1], f, inp.c_ag.reshape(-1)[r0:r1], inp.c_ag.reshape(-1), r0, cfg.symmetric)
        p_sp = None
        if cfg.use_sp:
            s = flat(inp.s_ema)
            p_sp = positive_block(s[r0:r1], s, inp.c_sp.reshape(-1)[r0:r1], inp.c_sp.reshape(-1), r0, cfg.symmetric)
        return p_ag, p_sp, eye

    def code_denominator(self, p_ag: torch.Tensor | None, eye: torch.Tensor, nimg: int) -> torch.Tensor:
        """D = (P_ag ∪ R) \\ {i}, R the same (N, NB) rows for every anchor image."""
        r = self.neg.repeat(nimg, 1)
        d = r if p_ag is None else (p_ag | r)
        return d & ~eye

    def paper_negatives(self, positives: torch.Tensor, eye: torch.Tensor, b0: int, stream: int) -> torch.Tensor:
        """N: a ρ-sample of the non-positive, non-anchor patches, drawn per anchor image from its own seed."""
        if self.paper_negs is not None:
            draw = self.paper_negs[stream][b0 * self.n : b0 * self.n + len(eye)]
        else:
            rows = []
            for b in range(b0, b0 + len(eye) // self.n):
                g = device_generator(eye.device, self.seed * 1_000_003 + 2 * b + stream)
                rows.append(torch.rand(self.n, self.nb, generator=g, device=eye.device) < self.cfg.rho)
            draw = torch.cat(rows)
        return draw & ~positives & ~eye

    def __call__(self, b0: int, b1: int, z: torch.Tensor, z_mix: torch.Tensor | None) -> torch.Tensor:
        """Partial sums of the block as one tensor (see `combine` for the layout)."""
        cfg, n, nb, nimg = self.cfg, self.n, self.nb, b1 - b0
        zf = z.reshape(nb, -1)
        rows = zf[b0 * n : b1 * n]
        p_ag, p_sp, eye = self.masks(b0, b1)
        per_img = lambda t: t.reshape(nimg, -1).sum(1)  # noqa: E731  (rows of one image summed)

        if cfg.objective == "self":  # Eq. 1: positive = the same patch of the augmented view
            za = self.inp.z_aug.reshape(nb, -1)
            logits = rows @ za.T / cfg.tau
            denom = self.code_denominator(None, eye, nimg) | eye
            logp = _masked_log_prob(logits, denom)
            return torch.stack([per_img(logp[eye])])

        def anchors():
            """(anchor rows, contrast set, coefficient per row) for Φ and each Ψ term."""
            yield "phi", rows, zf, None
            if cfg.use_lhp and cfg.propagation == "gradient":
                zm = z_mix.reshape(nb, -1)
                yield "psi", zm[b0 * n : b1 * n], (zm if cfg.form == "code" else zf), None
            elif cfg.use_lhp:  # loss propagation: each kept neighbour is an anchor with i's positives
                weights, denom = self.inp.lhp
                coef = (weights[b0:b1] / denom[b0:b1, :, None]).reshape(-1, 9)
                for k in range(9):
                    if coef[:, k].any():
                        yield "psi", _shift_rows(z, b0, b1, self.inp.grid, k), zf, coef[:, k]

        if cfg.form == "code":
            d = self.code_denominator(p_ag, eye, nimg)
            kept = p_ag.any(1)
            w_ag = p_ag & kept[:, None]
            w_sp = (p_sp & kept[:, None]) if p_sp is not None else None
            out = {"phi": [], "psi": []}
            for name, a, contrast, coef in anchors():
                logp = _masked_log_prob(a @ contrast.T / cfg.tau, d)
                s_ag = (logp * w_ag).sum(1)
                s_sp = (logp * w_sp).sum(1) if w_sp is not None else torch.zeros_like(s_ag)
                if coef is not None:
                    s_ag, s_sp = s_ag * coef, s_sp * coef
                out[name].append(torch.stack([per_img(s_ag), per_img(s_sp)]))
            sums = [sum(out["phi"])]
            sums.append(sum(out["psi"]) if out["psi"] else torch.zeros_like(sums[0]))
            counts = torch.stack(
                [
                    per_img(w_ag.sum(1).to(z.dtype)),
                    per_img(w_sp.sum(1).to(z.dtype))
                    if w_sp is not None
                    else torch.zeros(nimg, dtype=z.dtype, device=z.device),
                ]
            )
            return torch.cat([torch.stack(sums).reshape(4, nimg), counts])  # (6, nimg)

        # paper form: per-anchor means (Eq. 5), separate negative sets, kept anchors have ≥1 task-agnostic positive
        kept = p_ag.any(1)
        terms = [("ag", p_ag, self.paper_negatives(p_ag, eye, b0, 0))]
        if p_sp is not None:
            terms.append(("sp", p_sp, self.paper_negatives(p_sp, eye, b0, 1)))
        res = {}
        for name, a, contrast, coef in anchors():
            logits = a @ contrast.T / cfg.tau
            for tag, pos, negs in terms:
                logp = _masked_log_prob(logits, pos | negs)
                npos = pos.sum(1)
                per_anchor = -(logp * pos).sum(1) / npos.clamp_min(1)
                per_anchor = torch.where(kept & (npos > 0), per_anchor, torch.zeros_like(per_anchor))
                if coef is not None:
                    per_anchor = per_anchor * coef
                key = f"{name}_{tag}"
                res[key] = res.get(key, 0) + per_img(per_anchor)
        zeros = torch.zeros(nimg, dtype=z.dtype, device=z.device)
        order = ["phi_ag", "phi_sp", "psi_ag", "psi_sp"]
        return torch.stack([res.get(k, zeros) for k in order] + [per_img(kept.to(z.dtype)), zeros])  # (6, nimg)


def hp_loss(
    inp: LossInputs,
    cfg: LossConfig | None = None,
    lam: float = 0.0,
    neg_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    paper_negs: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LossParts:
    """The HP loss of one iteration (`cfg` defaults to `LossConfig()`). The random sample is injectable: `neg_mask`
    (code form, bool (N, NB)), `paper_negs` (paper form, two bool (NB, NB) draws for N_ag and N_sp), or a
    `generator` to draw them."""
    cfg = LossConfig() if cfg is None else cfg
    b, n, _ = inp.z.shape
    nb = b * n
    lam = lam if cfg.use_sp else 0.0
    if cfg.objective == "hp" and (inp.f is None or inp.c_ag is None):
        raise ValueError("hp_loss needs the mining features f and criteria c_ag")
    if cfg.objective == "hp" and cfg.use_sp and (inp.s_ema is None or inp.c_sp is None):
        raise ValueError("use_sp=True needs s_ema and c_sp (or set use_sp=False)")
    if cfg.use_lhp and cfg.objective == "hp":
        if cfg.propagation == "gradient" and inp.z_mix is None:
            raise ValueError("use_lhp=True needs z_mix (or set use_lhp=False)")
        if cfg.propagation == "loss" and (inp.lhp is None or inp.grid is None):
            raise ValueError("propagation='loss' needs the LHP weights (lhp) and the grid")
    needs_r = cfg.form == "code" or cfg.objective == "self"
    if needs_r and neg_mask is None:
        neg_mask = draw_negative_mask(n, nb, cfg.rho, generator, device=inp.z.device)
    if needs_r and tuple(neg_mask.shape) != (n, nb):
        raise ValueError(f"neg_mask must be bool of shape (N, NB) = ({n}, {nb}), found {tuple(neg_mask.shape)}")
    seed = None
    if cfg.form == "paper" and paper_negs is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    block = _Block(cfg, inp, neg_mask.to(inp.z.device) if neg_mask is not None else None, seed, paper_negs)

    fused = cfg.fused_on(inp.z.device)
    data = _block_data(cfg, inp, block) if fused else None
    parts, counted = [], []
    for b0 in range(0, b, cfg.chunk_images):
        b1 = min(b, b0 + cfg.chunk_images)
        args = (b0, b1, inp.z, inp.z_mix)
        if fused:
            part, n_ag, n_sp = fused_block(inp.z, inp.z_mix if cfg.use_lhp else None, data, b0, b1)
            parts.append(part)
            counted.append((n_ag, n_sp))
        elif cfg.checkpoint and torch.is_grad_enabled():
            parts.append(checkpoint(block, *args, use_reentrant=False))
        else:
            parts.append(block(*args))
    sums = torch.cat(parts, dim=1)  # (6, B)

    zero = inp.z.new_zeros(())
    reg = (
        consistency(inp.z, inp.z_aug).mean()
        if (cfg.use_reg and inp.z_aug is not None and cfg.objective == "hp")
        else zero
    )
    alpha = cfg.alpha if cfg.use_reg else 0.0
    if cfg.objective == "self":
        loss = -sums[0].sum() / nb
        return LossParts(total=loss, phi=loss, psi=zero, reg=zero)

    if counted:  # the fused path counted the positives on its way
        p_ag_counts = torch.cat([c[0] for c in counted]).reshape(b, n)
        p_sp_counts = torch.cat([c[1] for c in counted]).reshape(b, n) if cfg.use_sp else None
    else:
        with torch.no_grad():
            p_ag_counts, p_sp_counts = _positive_counts(block, b)
    dropped = int((p_ag_counts == 0).sum())
    if cfg.form == "code":
        scale = cfg.tau / cfg.base_temperature
        a_ag, a_sp, m_ag, m_sp, w_ag, w_sp = sums
        den = w_ag + lam * w_sp
        safe = torch.where(den > 0, den, torch.ones_like(den))
        phi_b = torch.where(den > 0, -scale * (a_ag + lam * a_sp) / safe, torch.zeros_like(den))
        psi_b = torch.where(den > 0, -scale * (m_ag + lam * m_sp) / safe, torch.zeros_like(den))
        phi = phi_b.mean()
        psi = psi_b.mean() if cfg.use_lhp else zero
        cont = (phi + psi) / 2 if cfg.use_lhp else phi
        with torch.no_grad():
            phi_ag = float(-scale * a_ag.sum() / w_ag.sum().clamp_min(1))
            phi_sp = float(-scale * a_sp.sum() / w_sp.sum()) if lam and float(w_sp.sum()) > 0 else float("nan")
    else:
        f_ag, f_sp, s_ag, s_sp, kept, _ = sums
        n_kept = kept.detach().sum().clamp_min(1)
        phi = (f_ag.sum() + lam * f_sp.sum()) / n_kept
        psi = (s_ag.sum() + lam * s_sp.sum()) / n_kept if cfg.use_lhp else zero
        cont = phi + psi
        phi_ag = float(f_ag.detach().sum() / n_kept)
        phi_sp = float(f_sp.detach().sum() / n_kept) if cfg.use_sp else float("nan")
    total = cont + alpha * reg
    return LossParts(
        total=total,
        phi=phi,
        psi=psi,
        reg=reg,
        phi_ag=phi_ag,
        phi_sp=phi_sp,
        n_pos_ag=p_ag_counts,
        n_pos_sp=p_sp_counts,
        dropped=dropped,
    )


def _block_data(cfg: LossConfig, inp: LossInputs, block: _Block) -> BlockData:
    """The flat inputs the fused path streams over (views, no copies)."""
    nb = block.nb
    return BlockData(
        f=inp.f.reshape(nb, -1),
        c_ag=inp.c_ag.reshape(-1),
        s=inp.s_ema.reshape(nb, -1) if cfg.use_sp else None,
        c_sp=inp.c_sp.reshape(-1) if cfg.use_sp else None,
        neg=block.neg,
        n=block.n,
        tau=cfg.tau,
        symmetric=cfg.symmetric,
        tile=cfg.tile,
        compile=cfg.fused == "compile",
    )


def _positive_counts(block: _Block, b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """|P_ag(i)| and |P_sp(i)| per anchor, (B, N), block by block (no grad)."""
    ag, sp = [], []
    for b0 in range(0, b, block.cfg.chunk_images):
        b1 = min(b, b0 + block.cfg.chunk_images)
        p_ag, p_sp, _ = block.masks(b0, b1)
        ag.append(p_ag.sum(1))
        if p_sp is not None:
            sp.append(p_sp.sum(1))
    return torch.cat(ag).reshape(b, -1), (torch.cat(sp).reshape(b, -1) if sp else None)
