"""Exercises that check themselves: `hpnb.check.check(name, your_function)` runs your function and hpnb's reference
on fresh random inputs and prints `[PASS]`, or `[FAIL]` with what was expected and what was found (type, shape,
dtype, the first differing entry). It never raises, so a notebook goes on after a failed check.

    def criterion_eq2(x, pool):             # your answer, in the notebook's exercise cell
        return (x @ pool.T).amax(dim=1)
    hpnb.check.check("criterion", criterion_eq2)
    # [PASS] criterion (Eq. 2, c_i = max_m sim(q_m, x_i)): 3 random cases

`passes(name, fn)` returns the verdict instead of printing it. `EXERCISES` lists every exercise of the series
(notebook, idea, what its check catches); `reference(name)` gives hpnb's answer, for a student who is stuck.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Exercise:
    """One exercise: the idea, hpnb's reference answer, a maker of random inputs, and how answers are compared."""

    name: str
    notebook: str  # the two-digit prefix of the notebook that holds it
    idea: str  # shown in the check's line
    reference: Callable
    inputs: Callable[[torch.Generator], tuple]
    catches: str  # the common mistakes the check catches (docs/workshop.md lists them)
    atol: float = 1e-5
    compare: Callable | None = None  # (found, expected, inputs) -> message or None; default: `difference`
    calls: bool = True  # False: `compare` gets the student's function itself (it tries many inputs)


def _unit(g: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _size(g: torch.Generator, lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


# -- references and inputs ----------------------------------------------------------------------------------------


def _cosine_map(feats: torch.Tensor, anchor: tuple[int, int]) -> torch.Tensor:
    """cos(f_anchor, f_j) for every patch j of one image: feats (C, h, w) -> (h, w)."""
    from hpnb.features import similarity_map

    return similarity_map(feats[None], anchor)[0]


def _cosine_inputs(g):
    h, w = _size(g, 3, 9), _size(g, 3, 9)
    feats = torch.randn(_size(g, 4, 32), h, w, generator=g)
    return feats, (_size(g, 0, h - 1), _size(g, 0, w - 1))


def _pool_rows(f_pool: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    from hpnb.positives import patch_of_each_image

    return F.normalize(patch_of_each_image(f_pool, idx), dim=1)


def _pool_rows_inputs(g):
    m, c, h, w = _size(g, 3, 9), _size(g, 4, 12), _size(g, 2, 5), _size(g, 2, 5)
    feats = torch.randn(m, c, h, w, generator=g) * (torch.rand(m, 1, h, w, generator=g) * 4 + 0.2)
    return feats, torch.randint(h * w, (m,), generator=g)


def _criterion(x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    from hpnb.positives import criteria

    return criteria(x, pool)


def _criterion_inputs(g):
    d = _size(g, 4, 24)
    return _unit(g, _size(g, 5, 60), d), _unit(g, _size(g, 2, 16), d)


def _symmetric_mask(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    from hpnb.positives import positive_block

    return positive_block(x, x, c, c, 0, symmetric=True)


def _mask_inputs(g):
    x = _unit(g, _size(g, 6, 40), _size(g, 4, 16))
    c = (x @ _unit(g, _size(g, 3, 8), x.shape[1]).T).amax(1)  # criteria of a random pool: realistic thresholds
    return x, c


def _mix_one_image(s: torch.Tensor, weights: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    from hpnb.positives import mix_codes

    return mix_codes(s[None], weights[None], denom[None])[0]


def _mix_inputs(g):
    from hpnb.positives import window_index

    h, w = _size(g, 3, 7), _size(g, 3, 7)
    _, valid = window_index(h, w)
    weights = torch.rand(h * w, 9, generator=g) * (torch.rand(h * w, 9, generator=g) > 0.4) * valid
    return torch.randn(_size(g, 2, 12), h, w, generator=g), weights, valid.sum(-1).float()


def _phi_code_form(
    z: torch.Tensor,
    f: torch.Tensor,
    s: torch.Tensor,
    c_ag: torch.Tensor,
    c_sp: torch.Tensor,
    neg: torch.Tensor,
    lam: float,
    tau: float,
) -> torch.Tensor:
    """Written out term by term, as a student would; tests/test_check.py checks it against hpnb.losses.hp_loss."""
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    p_ag, p_sp = _symmetric_mask(f, c_ag), _symmetric_mask(s, c_sp)  # Eq. 3 / Eq. 4 (exercise 2.3)
    kept = p_ag.any(1, keepdim=True)
    w = (p_ag & kept).float() + lam * (p_sp & kept).float()
    denominator = (p_ag | neg) & ~eye
    logits = z @ z.T / tau
    log_p = logits - logits.masked_fill(~denominator, float("-inf")).logsumexp(1, keepdim=True)
    log_p = torch.where(w > 0, log_p, torch.zeros_like(log_p))
    return -(tau / 0.07) * (w * log_p).sum() / w.sum()


def _phi_inputs(g):
    """One image of n patches in a few groups (so that hidden positives exist), criteria against small random pools."""
    n, k, c, groups = _size(g, 12, 30), _size(g, 6, 12), _size(g, 8, 16), _size(g, 2, 4)
    member = torch.randint(groups, (n,), generator=g)

    def clustered(dim):
        centres = torch.randn(groups, dim, generator=g)
        return F.normalize(centres[member] + 0.6 * torch.randn(n, dim, generator=g), dim=1)

    f, s, z = clustered(c), clustered(k), clustered(k)
    c_ag = (f @ _unit(g, _size(g, 3, 6), c).T).amax(1)
    c_sp = (s @ _unit(g, _size(g, 3, 6), k).T).amax(1)
    neg = torch.rand(n, n, generator=g) < 0.3
    lam, tau = float(torch.rand((), generator=g)) * 0.8 + 0.1, float(torch.rand((), generator=g)) * 0.5 + 0.3
    return z, f, s, c_ag, c_sp, neg, lam, tau


def _lhp_weights(attn: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    from hpnb.positives import attention_to_lhp

    return attention_to_lhp(attn[None], grid, "code", sigma)[0][0]


def _lhp_inputs(g):
    h, w = _size(g, 3, 7), _size(g, 3, 7)
    n = h * w
    return torch.randn(1 + n, 1 + n, generator=g) * 2, (h, w), float(_size(g, 5, 40))


def _hungarian(conf: np.ndarray) -> np.ndarray:
    from hpnb.metrics import hungarian_match

    return hungarian_match(conf)


def _hungarian_inputs(g):
    n = _size(g, 3, 8)
    conf = torch.randint(0, 1000, (n, n), generator=g)
    conf[: n // 2 + 1, int(torch.randint(n, (1,), generator=g))] += 2000  # a popular class: the row argmaxes collide
    return (conf.numpy(),)


def _compare_matching(found, expected, inputs) -> str | None:
    """A one-to-one map that matches as many pixels as the optimum (ties allow several right answers)."""
    (conf,) = inputs
    found = np.asarray(found)
    if found.shape != expected.shape:
        return f"expected a mapping of shape {expected.shape} (one class per cluster), found shape {found.shape}"
    if not np.issubdtype(found.dtype, np.integer):
        return f"expected integer class indices, found dtype {found.dtype}"
    if sorted(found.tolist()) != sorted(expected.tolist()):
        return f"expected a one-to-one map (each class used once), found {found.tolist()}"
    got, best = conf[np.arange(len(conf)), found].sum(), conf[np.arange(len(conf)), expected].sum()
    if got != best:
        return f"expected {best} matched pixels (the optimum), found {got} with mapping {found.tolist()}"
    return None


def _acc_miou(conf: np.ndarray) -> tuple[float, float]:
    from hpnb.metrics import scores

    s = scores(conf)
    return s.acc, s.miou


def _acc_miou_inputs(g):
    n = _size(g, 2, 8)
    return ((torch.randint(0, 500, (n, n), generator=g) + 2000 * torch.eye(n, dtype=torch.long)).numpy(),)


def _lambda(t: int, total: int, warmup: int) -> float:
    from hpnb.losses import lambda_schedule

    return lambda_schedule(t, total, warmup)


def _lambda_compare(found, expected, inputs) -> str | None:
    """λ at every step of a short run, so the warm-up's edge and the last step are both tried."""
    _, total, warmup = inputs
    user = found  # the student's function itself (Exercise.calls is False)
    for t in range(total + 1):
        want = _lambda(t, total, warmup)
        try:
            got = float(user(t, total, warmup))
        except NotImplementedError:
            raise  # `check` says "not implemented yet"
        except Exception as err:  # noqa: BLE001  (a student's error is reported, not raised)
            return f"raised {type(err).__name__}: {err} at t={t}"
        if not np.isclose(got, want, atol=1e-9):
            return f"at t={t} (total={total}, warm-up={warmup}) expected λ = {want:.4f}, found {got:.4f}"
    return None


def _cluster_predict(codes: torch.Tensor, centroids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cluster id of every pixel: the centroid nearest in cosine to the bilinearly upsampled code."""
    from hpnb.evaluate import cluster_scores

    return cluster_scores(codes[None], F.normalize(centroids, dim=1), size)[0].argmax(0)


def _cluster_predict_inputs(g):
    h, w, k = _size(g, 3, 6), _size(g, 3, 6), _size(g, 4, 16)
    return torch.randn(k, h, w, generator=g), torch.randn(_size(g, 2, 6), k, generator=g), (4 * h + 1, 4 * w + 3)


def _seed_spread(values: list[float]) -> tuple[float, float]:
    import statistics

    return statistics.mean(values), statistics.stdev(values)


def _seed_spread_inputs(g):
    return ([float(v) for v in 50 + 5 * torch.randn(_size(g, 2, 5), generator=g)],)


def _paired_verdict(a: list[float], b: list[float]) -> tuple[float, float, str]:
    import statistics

    from hpnb.report import verdict

    diffs = [x - y for x, y in zip(a, b, strict=True)]  # one difference per seed: the seeds pair the runs
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    return mean, std, verdict(mean, std)


def _paired_inputs(g):
    n = _size(g, 3, 5)
    shared = torch.randn(n, generator=g) * 6  # what a seed does to both runs (data order, initialisation)
    shift = float(torch.randn((), generator=g)) * 3
    noise = float(torch.rand((), generator=g)) * 2 + 0.2
    a = (40 + shared + shift + torch.randn(n, generator=g) * noise).tolist()
    b = (40 + shared + torch.randn(n, generator=g) * noise).tolist()
    return a, b


def _compare_verdict(found, expected, inputs) -> str | None:
    if not isinstance(found, tuple) or len(found) != 3:
        return f"expected a tuple (mean, std, verdict), found {_describe(found)}"
    for name, f, e in zip(("mean", "std"), found[:2], expected[:2], strict=True):
        if not np.isclose(float(f), e, atol=1e-6, rtol=1e-6):
            return f"expected {name} {e:.4f}, found {float(f):.4f}"
    if found[2] != expected[2]:
        return f"expected the verdict {expected[2]!r}, found {found[2]!r}"
    return None


def _overlay(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    from hpnb.viz import overlay

    return overlay(image, labels, colours, alpha)


def _overlay_inputs(g):
    h, w, n = _size(g, 3, 9), _size(g, 3, 9), _size(g, 2, 6)
    image = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    labels = torch.randint(-1, n, (h, w), generator=g).numpy()  # -1: ignore, the photo shows through
    colours = torch.randint(0, 256, (n, 3), generator=g, dtype=torch.uint8).numpy()
    return image, labels, colours, float(torch.rand(1, generator=g) * 0.4 + 0.3)


def _closest_patches(
    codes: torch.Tensor, centroid: torch.Tensor, n: int, image_of: torch.Tensor, per_image: int
) -> torch.Tensor:
    from hpnb.report import closest_patches

    return closest_patches(codes, centroid, n, image_of, per_image)


def _closest_inputs(g):
    k, n_images, per_image = _size(g, 4, 12), _size(g, 3, 6), _size(g, 1, 3)
    image_of = torch.arange(n_images).repeat_interleave(_size(g, 5, 10))
    centroid = torch.randn(k, generator=g)
    scale = torch.rand(len(image_of), 1, generator=g) * 5 + 0.1  # codes of very different lengths
    codes = torch.randn(len(image_of), k, generator=g) * scale
    codes[image_of == 0] += 2 * centroid * scale[image_of == 0]  # one image full of the cluster, as photos often are
    return codes, centroid, _size(g, per_image + 1, per_image * n_images), image_of, per_image


EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in [
        Exercise(
            "cosine_map",
            "01",
            "cosine similarity of one patch to every patch",
            _cosine_map,
            _cosine_inputs,
            "a dot product without L2 normalisation; normalising over the wrong dimension; (x, y) swapped",
        ),
        Exercise(
            "hungarian",
            "01",
            "Hungarian matching of clusters to classes",
            _hungarian,
            _hungarian_inputs,
            "each cluster mapped to its most frequent class (two clusters may then share a class); the assignment "
            "of the transposed matrix (class -> cluster); minimising instead of maximising",
            compare=_compare_matching,
        ),
        Exercise(
            "pool_rows",
            "02",
            "the reference pool Q^ag: one patch per image (patch idx[m] of image m), as L2-normalised rows",
            _pool_rows,
            _pool_rows_inputs,
            "every image's patches at all M indices (an (M, C, M) tensor); the image's mean feature instead of one "
            "patch; rows not normalised; the M patches taken from the first image",
        ),
        Exercise(
            "criterion",
            "02",
            "Eq. 2, c_i = max_m sim(q_m, x_i)",
            _criterion,
            _criterion_inputs,
            "the mean instead of the max over the pool; the max over the anchors instead of the pool (a shape error)",
        ),
        Exercise(
            "symmetric_mask",
            "02",
            "Eq. 3, P_i = {j ≠ i : sim_ij > c_i or sim_ij > c_j}",
            _symmetric_mask,
            _mask_inputs,
            "the one-sided criterion (missing sim_ij > c_j); the anchor left in its own set; a float mask instead of a bool one",
        ),
        Exercise(
            "lhp_weights",
            "03",
            "the code form's LHP weights, Eq. 7-8 (clip, softmax, ×σ, keep ≥ mean, 3×3 window)",
            _lhp_weights,
            _lhp_inputs,
            "the CLS token left in; no percentile clip; query and key swapped; windows that wrap around the grid's edge",
        ),
        Exercise(
            "mix_codes",
            "03",
            "Eq. 9 in the code form, s_mix_i = (1/denom_i) Σ_k w_ik s_window(i,k), for one image",
            _mix_one_image,
            _mix_inputs,
            "no division by the denominator; neighbours read from the mirrored offset (−dy, −dx)",
        ),
        Exercise(
            "phi_code_form",
            "04",
            "the code form's Φ for one image: a pair-level mean of −log p_ij weighted 1 (P_ag) and λ (P_sp), × τ/0.07",
            _phi_code_form,
            _phi_inputs,
            "a mean over anchors first (Eq. 5's per-anchor mean); the task-specific positives put into the "
            "denominator; the anchor itself in its denominator; the τ/0.07 factor forgotten; one-sided positives",
        ),
        Exercise(
            "lambda_schedule",
            "04",
            "λ of Eq. 11: 0 during the warm-up, then linear to 1",
            _lambda,
            lambda g: (0, _size(g, 10, 60), _size(g, 1, 8)),
            "the ramp one step ahead (t − warm-up + 1, an off-by-one); a ramp over the whole run",
            compare=_lambda_compare,
            calls=False,
        ),
        Exercise(
            "acc_miou",
            "05",
            "pixel accuracy and mIoU (%) from a matched (predicted, ground-truth) confusion",
            _acc_miou,
            _acc_miou_inputs,
            "IoU = TP / (TP + FP) (the FN term forgotten); fractions instead of %",
            atol=1e-6,
        ),
        Exercise(
            "cluster_predict",
            "05",
            "the cluster probe's prediction, argmax_c cos(up(s), μ_c)",
            _cluster_predict,
            _cluster_predict_inputs,
            "centroids not normalised (a larger centroid wins); the argmax over the wrong dimension; nearest-"
            "neighbour instead of bilinear upsampling",
        ),
        Exercise(
            "seed_spread",
            "06",
            "mean ± std over seeds (the sample std, n − 1)",
            _seed_spread,
            _seed_spread_inputs,
            "the population std (n instead of n − 1: too small a spread for 3 seeds)",
        ),
        Exercise(
            "paired_verdict",
            "06",
            "HP against a baseline over seeds: the per-seed differences' mean and sample std, and what they allow",
            _paired_verdict,
            _paired_inputs,
            "the spread of each side instead of the spread of the paired differences (it hides a consistent gain "
            "under the seeds' own variation); the population std; a verdict at one std instead of two",
            compare=_compare_verdict,
        ),
        Exercise(
            "overlay",
            "07",
            "the overlay (1 − α)·photo + α·colour[label], uint8, ignore (−1) left as the photo",
            _overlay,
            _overlay_inputs,
            "α and 1 − α swapped; ignore pixels (−1) painted with the last colour; uint8 arithmetic that wraps around "
            "(truncation instead of rounding)",
            atol=0.5,
        ),
        Exercise(
            "closest_patches",
            "07",
            "the n patches nearest a cluster centroid in cosine, nearest first, at most per_image of one image",
            _closest_patches,
            _closest_inputs,
            "no cap per image (one photo fills the strip); the cap applied after taking the n nearest (fewer than n "
            "patches); the dot product without normalising the codes (long codes win); the farthest patches first",
        ),
    ]
}


def reference(name: str) -> Callable:
    """hpnb's answer to an exercise (same signature as the student's function): use it to go on when stuck."""
    return _exercise(name).reference


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise KeyError(f"no exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def _describe(value) -> str:
    if isinstance(value, torch.Tensor | np.ndarray):
        return f"{type(value).__name__} {tuple(value.shape)} {value.dtype}"
    if isinstance(value, tuple | list):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def difference(found, expected, atol: float = 1e-5, rtol: float = 1e-5) -> str | None:
    """None when `found` equals `expected` (tensors, arrays, numbers, tuples of them) within atol/rtol, else what
    differs: the type, the shape, the dtype kind (bool vs number), or the first differing entry and how many differ."""
    if isinstance(expected, tuple | list):
        if not isinstance(found, tuple | list) or len(found) != len(expected):
            return f"expected {_describe(expected)}, found {_describe(found)}"
        for k, (f, e) in enumerate(zip(found, expected, strict=True)):
            msg = difference(f, e, atol, rtol)
            if msg:
                return f"item {k}: {msg}"
        return None
    if isinstance(expected, int | float):
        try:
            got = float(found)
        except (TypeError, ValueError):
            return f"expected a number, found {_describe(found)}"
        return None if np.isclose(got, expected, atol=atol, rtol=rtol) else f"expected {expected:.6g}, found {got:.6g}"
    exp = expected.detach().cpu().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    if not isinstance(found, torch.Tensor | np.ndarray):
        return f"expected {_describe(expected)}, found {_describe(found)}"
    got = found.detach().cpu().numpy() if isinstance(found, torch.Tensor) else found
    if got.shape != exp.shape:
        return f"expected shape {exp.shape}, found shape {got.shape}"
    if (exp.dtype == bool) != (got.dtype == bool):
        return f"expected dtype {expected.dtype}, found dtype {found.dtype}"
    if exp.dtype == bool:
        bad = got != exp
    else:
        got, exp_f = got.astype(np.float64), exp.astype(np.float64)
        bad = ~np.isclose(got, exp_f, atol=atol, rtol=rtol, equal_nan=True)
    if not bad.any():
        return None
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return (
        f"at index {first} expected {_value(exp[first])}, found {_value(got[first])} "
        f"({int(bad.sum())} of {bad.size} entries differ)"
    )


def _value(v) -> str:
    v = v.item() if hasattr(v, "item") else v
    return f"{v:.6g}" if isinstance(v, float) else repr(v)


def _shapes(args: tuple) -> str:
    return ", ".join(_describe(a) if isinstance(a, torch.Tensor | np.ndarray) else repr(a) for a in args)


def check(name: str, fn: Callable, trials: int = 3, seed: int = 0) -> None:
    """Run `fn` and hpnb's reference on `trials` fresh random inputs and print [PASS], or [FAIL] with what differs.

    Never raises: a function that is not written yet (NotImplementedError) or that fails is reported as [FAIL].
    Returns nothing, so a notebook cell shows only the printed line (`passes` returns the verdict)."""
    passes(name, fn, trials, seed, verbose=True)


def passes(name: str, fn: Callable, trials: int = 3, seed: int = 0, verbose: bool = False) -> bool:
    """The verdict of `check` (True: [PASS]); prints the same lines when `verbose`."""
    ex = _exercise(name)
    gen = torch.Generator().manual_seed(seed)
    say = print if verbose else (lambda *a: None)
    for trial in range(trials):
        inputs = ex.inputs(gen)
        expected = ex.reference(*inputs)
        compare = ex.compare or (lambda f, e, _: difference(f, e, ex.atol))
        try:
            found = fn(*inputs) if ex.calls else fn
            msg = compare(found, expected, inputs)
        except NotImplementedError:
            say(f"[FAIL] {name}: not implemented yet. Write your answer where the cell raises NotImplementedError, or")
            say(f'       go on with hpnb\'s: {getattr(fn, "__name__", name)} = hpnb.check.reference("{name}")')
            return False
        except Exception as err:  # noqa: BLE001  (a student's error is reported, not raised)
            say(f"[FAIL] {name} ({ex.idea}): raised {type(err).__name__}: {err}")
            say(f"       on inputs {_shapes(inputs)}")
            return False
        if msg:
            say(f"[FAIL] {name} ({ex.idea}), case {trial + 1} of {trials}:")
            say(f"       inputs {_shapes(inputs)}")
            say(f"       {msg}")
            return False
    say(f"[PASS] {name} ({ex.idea}): {trials} random cases")
    return True
