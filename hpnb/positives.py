"""Hidden positives (paper §3.2–3.4): reference pools, criteria (Eq. 2), GHP sets (Eq. 3–4), LHP (Eq. 7–9).

Everything is a batched matrix operation; masks are boolean and built one block of anchors at a time, never
as a float NB×NB matrix.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from hpnb.utils import HpnbError, exact_fp32

# ----------------------------------------------------------------------------------------------------------
# Reference pools and criteria (GHP)
# ----------------------------------------------------------------------------------------------------------


def pool_image_indices(
    n_images: int, pool_size: int, generator: torch.Generator | None = None, exclude=()
) -> torch.Tensor:
    """The M images a reference pool draws from: M distinct indices in [0, n_images), without replacement, none
    of them in `exclude` (e.g. the anchor images of a measurement), spec §2.2. Raises when fewer than M remain."""
    excluded = {int(i) for i in exclude}
    allowed = torch.tensor([i for i in range(n_images) if i not in excluded], dtype=torch.long)
    if pool_size > len(allowed):
        outside = f" outside the {len(excluded)} anchor images" if excluded else ""
        raise HpnbError(
            f"a reference pool of M={pool_size} takes one patch from each of {pool_size} different images, "
            f"but only {len(allowed)} images are available{outside} ({n_images} in all). Lower M "
            f"(pool_size) to at most {len(allowed)}, or use more images."
        )
    if not excluded:  # the trainer's draw: randperm over all images, its first M
        return torch.randperm(n_images, generator=generator)[:pool_size]
    return allowed[torch.randperm(len(allowed), generator=generator)[:pool_size]]


def patch_of_each_image(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Patch idx[b] (row-major over the h × w grid) of each image b: (B, D, h, w), (B,) -> (B, D), not normalised."""
    return x.flatten(2)[torch.arange(len(x), device=x.device), :, idx.to(x.device)]


def pick_patch_per_image(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniformly random patch of each image, as a 1×1 map: (B, D, h, w) -> (B, D, 1, 1), not normalised."""
    b, _, h, w = x.shape
    idx = torch.randint(h * w, (b,), generator=generator, device="cpu")
    return patch_of_each_image(x, idx)[:, :, None, None]


def sample_patches_per_image(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One uniformly random patch of each image: (B, D, h, w) -> L2-normalised (B, D) (spec §2.2)."""
    picked = pick_patch_per_image(x, generator).flatten(1)
    return F.normalize(picked.to(torch.promote_types(picked.dtype, torch.float32)), dim=1)


def pool_patches(
    feature_batches, pool_size: int, generator: torch.Generator | None = None, task_specific: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """The patches the reference pools are made of: per batch of backbone maps (B, C, h, w), one random patch of each
    of its images for Q_ag, yielded as ("ag", (b, C, 1, 1)), then an independent one for Q_sp, ("sp", ...), until M
    images (the first M of `feature_batches`). Lazy, so that heads applied between two yields draw their dropout
    where they always did (`pools_from_patches`); a list of it keeps a pool's draw for later."""
    have = 0
    for feats in feature_batches:
        feats = feats[: min(len(feats), pool_size - have)]
        yield "ag", pick_patch_per_image(feats, generator)
        if task_specific:
            yield "sp", pick_patch_per_image(feats, generator)
        have += len(feats)
        if have >= pool_size:
            return
    raise ValueError(
        f"a reference pool of M={pool_size} needs {pool_size} images, the data gave {have}; "
        "lower pool_size (M) or use more images"
    )


def pools_from_patches(patches, heads) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Q_ag (M, C) from the "ag" patches through the mining features f, Q_sp (M, K) from the "sp" patches through the
    momentum head S' (None without them); rows stored in fp16 and L2-normalised, as the official pools."""
    parts: dict[str, list[torch.Tensor]] = {"ag": [], "sp": []}
    with torch.no_grad():
        for kind, patch in patches:
            head = heads.mining_features if kind == "ag" else heads.momentum_codes
            parts[kind].append(head(patch).flatten(1).half())
    norm = lambda rows: F.normalize(torch.cat(rows).float(), dim=1)  # noqa: E731
    return norm(parts["ag"]), (norm(parts["sp"]) if parts["sp"] else None)


def build_reference_pools(
    feature_batches, heads, pool_size: int, generator: torch.Generator | None = None, task_specific: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Q_ag (M, C) and Q_sp (M, K): one random patch per image of the mining features f and of the momentum codes s'
    (independent draws), from the first M images of `feature_batches` (backbone maps (B, C, h, w)); spec §2.2–2.3.
    Rows are stored in fp16 and L2-normalised, as the official pools.

    The heads act on each patch alone (1×1 convolutions, channel dropout drawn per image), so the patch is picked
    first and only it goes through them: the same pools as heads-then-pick, h·w times less work."""
    return pools_from_patches(pool_patches(feature_batches, pool_size, generator, task_specific), heads)


def criteria(x: torch.Tensor, pool: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Eq. 2: c_i = max_m sim(q_m, x_i) for unit rows x (n, D) and pool (M, D); chunked over anchors -> (n,).

    In at least fp32 under any autocast or TF32 setting (`exact_fp32`): the criteria are thresholds."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, pool = x.to(dtype), pool.to(device=x.device, dtype=dtype)
    with exact_fp32(x.device):
        return torch.cat([(x[i : i + chunk] @ pool.T).amax(dim=1) for i in range(0, len(x), chunk)])


def positive_block(
    x_rows: torch.Tensor,
    x_all: torch.Tensor,
    c_rows: torch.Tensor,
    c_all: torch.Tensor,
    row_offset: int,
    symmetric: bool = True,
) -> torch.Tensor:
    """Eq. 3/4 for a block of anchors: bool (n, NB), P(i) = {j ≠ i : sim_ij > c_i ∨ sim_ij > c_j}.

    `row_offset` is the flat index of the first anchor row in `x_all`, so the anchor itself can be excluded.
    symmetric=False keeps only sim_ij > c_i (the one-sided ablation of Table 4(e)).
    """
    dtype = torch.promote_types(x_rows.dtype, torch.float32)  # bf16 rows: their exact fp32 products, as `criteria`
    with exact_fp32(x_rows.device):  # the threshold test in true fp32 (no autocast, no TF32)
        sim = x_rows.to(dtype) @ x_all.to(dtype).T
    pos = sim > c_rows[:, None]
    if symmetric:
        pos |= sim > c_all[None, :]
    rows = torch.arange(len(x_rows), device=x_rows.device)
    pos[rows, rows + row_offset] = False
    return pos


def positive_sets(x: torch.Tensor, pool: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Full bool (NB, NB) positive mask of Eq. 3/4 for unit features x (NB, D) — small inputs only (notebooks, tests)."""
    c = criteria(x, pool)
    return positive_block(x, x, c, c, 0, symmetric)


# ----------------------------------------------------------------------------------------------------------
# Local hidden positives (LHP)
# ----------------------------------------------------------------------------------------------------------

OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # 3×3 window, row-major, k = 4 is the anchor


def window_index(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat index of each patch's 9 window cells (N, 9) (0 where outside the grid) and their validity (N, 9)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1, 1), xs.reshape(-1, 1)
    dy = torch.tensor([o[0] for o in OFFSETS], device=device)
    dx = torch.tensor([o[1] for o in OFFSETS], device=device)
    ny, nx = ys + dy, xs + dx
    valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
    return torch.where(valid, ny * w + nx, torch.zeros_like(ny)), valid


def attention_to_lhp(
    attn: torch.Tensor,
    grid: tuple[int, int],
    form: str = "code",
    sigma: float = 28.0,
    clip: tuple[float, float] = (0.1, 0.9),
) -> tuple[torch.Tensor, torch.Tensor]:
    """LHP weights from head-averaged last-block PRE-softmax scores (B, 1+N, 1+N), CLS first.

    Returns (weights (B, N, 9) over the 3×3 window of each anchor, zero where not kept; denom (B, N)).
    code  (spec §2.7): clip each row to its [10th, 90th] percentile, softmax over the N patches, ×σ,
          keep entries ≥ the row's computed mean, divide by the window size (9/6/4).
    paper (Eq. 7–9): T̃_i = softmax over the N patches of the head-averaged scores (the paper does not say more),
          keep t_j > Avg(T̃_i), weight σ·t_j, divide by |I_local| (the number kept).
    """
    h, w = grid
    scores = attn[:, 1:, 1:].float()  # drop CLS: (B, N, N), row i = anchor i as query
    if scores.shape[-1] != h * w:
        raise ValueError(f"attention has {scores.shape[-1]} patches, the grid {h}×{w} has {h * w}")
    if form == "code":
        lo = torch.quantile(scores, clip[0], dim=-1, keepdim=True)
        hi = torch.quantile(scores, clip[1], dim=-1, keepdim=True)
        t = torch.softmax(torch.minimum(torch.maximum(scores, lo), hi), dim=-1) * sigma
        thresh = t.mean(dim=-1, keepdim=True)
    elif form == "paper":
        t = torch.softmax(scores, dim=-1)
        thresh = t.mean(dim=-1, keepdim=True)
    else:
        raise ValueError(f"form must be 'code' or 'paper', found {form!r}")
    idx, valid = window_index(h, w, device=scores.device)
    t_win = torch.gather(t, 2, idx.expand(len(t), -1, -1))  # (B, N, 9)
    kept = valid & ((t_win >= thresh) if form == "code" else (t_win > thresh))
    if form == "code":
        weights = torch.where(kept, t_win, torch.zeros_like(t_win))
        denom = valid.sum(-1).to(weights.dtype).expand(len(t), -1)
    else:
        weights = torch.where(kept, sigma * t_win, torch.zeros_like(t_win))
        denom = kept.sum(-1).clamp_min(1).to(weights.dtype)
    return weights, denom


def mix_codes(s: torch.Tensor, weights: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """Eq. 9 / spec §2.7: s_mix_i = (1/denom_i) Σ_k weights_ik · s_{window(i,k)} for codes s (B, K, h, w).

    Nine shifted multiply-adds in fp32 (no N×N product): gradients reach exactly the kept neighbours, in
    proportion to their weights.
    """
    b, k, h, w = s.shape
    padded = F.pad(s.float(), (1, 1, 1, 1))
    wts = (weights / denom[..., None]).reshape(b, h, w, 9).permute(0, 3, 1, 2).float()  # (B, 9, h, w)
    out = torch.zeros_like(padded[:, :, 1:-1, 1:-1])
    for j, (dy, dx) in enumerate(OFFSETS):
        out = out + padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] * wts[:, j : j + 1]
    return out


def dense_lhp_matrix(weights: torch.Tensor, denom: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The (B, N, N) matrix of mixing coefficients (for figures and tests): M_ij = weight_ij / denom_i."""
    h, w = grid
    b, n, _ = weights.shape
    idx, valid = window_index(h, w, device=weights.device)
    dense = torch.zeros(b, n, n, dtype=weights.dtype, device=weights.device)
    coef = torch.where(valid, weights / denom[..., None], torch.zeros_like(weights))
    return dense.scatter_add_(2, idx.expand(b, -1, -1), coef)
