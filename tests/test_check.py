"""Exercises (`hpnb.check`): every solution in the notebooks passes its check; the check fails on the student stub,
on plausible wrong answers, and says what differs; the student edition (`tools/student.py`) strips exactly the
solutions."""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hpnb
from hpnb.check import EXERCISES, check, difference, passes, reference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import student  # noqa: E402


def exercise_cells() -> list[tuple[str, dict]]:
    """(notebook prefix, cell) of every exercise cell of the series."""
    out = []
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        nb = json.loads(path.read_text())
        out += [(path.name[:2], c) for c in nb["cells"] if "exercise" in c.get("metadata", {}).get("tags", [])]
    return out


def run_cell(source: str) -> str:
    """Execute one exercise cell alone (it needs only the notebook's usual imports); return what it printed."""
    namespace = {"hpnb": hpnb, "torch": torch, "F": F, "np": np}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "<exercise>", "exec"), namespace)
    return out.getvalue()


def checked_name(source: str) -> str:
    return source.split('hpnb.check.check("', 1)[1].split('"', 1)[0]


def test_every_exercise_is_in_its_notebook_once_and_notebooks_from_01_have_two_to_four():
    cells = exercise_cells()
    names = [(nb, checked_name("".join(c["source"]))) for nb, c in cells]
    assert sorted(n for _, n in names) == sorted(EXERCISES), "each exercise of hpnb.check appears exactly once"
    for nb, name in names:
        assert EXERCISES[name].notebook == nb, (
            f"{name} is listed for notebook {EXERCISES[name].notebook}, found in {nb}"
        )
    per_notebook = {nb: sum(1 for n, _ in names if n == nb) for nb in ("01", "02", "03", "04", "05", "06", "07")}
    assert all(2 <= k <= 4 for k in per_notebook.values()), per_notebook


@pytest.mark.parametrize("cell", [c for _, c in exercise_cells()], ids=lambda c: checked_name("".join(c["source"])))
def test_solution_passes_and_student_stub_fails_with_a_helpful_line(cell):
    source = "".join(cell["source"])
    name = checked_name(source)
    assert "[PASS]" in run_cell(source) and "[FAIL]" not in run_cell(source)
    stub = student.strip_solution(source)
    assert "BEGIN SOLUTION" not in stub and "raise NotImplementedError" in stub
    printed = run_cell(stub)  # the check catches the NotImplementedError: the cell itself does not raise
    fn = source.split("def ", 1)[1].split("(", 1)[0]  # the student's function name
    assert f"[FAIL] {name}: not implemented yet" in printed
    assert f'{fn} = hpnb.check.reference("{name}")' in printed  # the line to go on with


def _sym_no_diag(x, c):
    sim = x @ x.T
    return (sim > c[:, None]) | (sim > c[None, :])


OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _quantiles_linear(s):
    return s.quantile(0.1, dim=-1, keepdim=True), s.quantile(0.9, dim=-1, keepdim=True)


def _lhp(attn, grid, sigma, clip=True, wrap=False, quantiles=_quantiles_linear):
    """A loop version of the code-form LHP weights with switchable mistakes."""
    h, w = grid
    s = attn[1:, 1:].float()
    if clip:
        s = s.clamp(*quantiles(s))
    t = torch.softmax(s, dim=-1) * sigma
    out = torch.zeros(h * w, 9)
    for i in range(h * w):
        y, x = divmod(i, w)
        for k, (dy, dx) in enumerate(OFFSETS):
            inside = 0 <= y + dy < h and 0 <= x + dx < w
            if inside or wrap:
                j = ((y + dy) % h) * w + (x + dx) % w
                out[i, k] = t[i, j] if t[i, j] >= t[i].mean() else 0.0
    return out


def _mix(s, weights, denom, sign=1):
    """A loop version of Eq. 9 for one image with switchable mistakes."""
    _, h, w = s.shape
    out = torch.zeros_like(s)
    for i in range(h * w):
        y, x = divmod(i, w)
        for k, (dy, dx) in enumerate(OFFSETS):
            yy, xx = y + sign * dy, x + sign * dx
            if 0 <= yy < h and 0 <= xx < w:
                out[:, y, x] += weights[i, k] / denom[i] * s[:, yy, xx]
    return out


def _hungarian_transposed(conf):
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(conf.T, maximize=True)  # class -> cluster, read as cluster -> class
    mapping = np.empty(len(conf), dtype=np.int64)
    mapping[rows] = cols
    return mapping


def _hungarian_minimised(conf):
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(conf)
    mapping = np.empty(len(conf), dtype=np.int64)
    mapping[rows] = cols
    return mapping


def _up(s, size, mode="bilinear"):
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(s[None], size=size, mode=mode, **kw)[0]


def _one_sided_with_anchor(x, c):
    return x @ x.T > c[:, None]


def _phi(z, f, s, c_ag, c_sp, neg, lam, tau, per_anchor=False, sp_in_denom=False, self_in=False, scale=True, sym=True):
    """The code-form Φ of one image with switchable mistakes."""
    eye = torch.eye(len(z), dtype=torch.bool)

    def positives(x, c):
        sim = x @ x.T
        return ((sim > c[:, None]) | (sim > c[None, :]) if sym else sim > c[:, None]) & ~eye

    p_ag, p_sp = positives(f, c_ag), positives(s, c_sp)
    kept = p_ag.any(1, keepdim=True)
    w = (p_ag & kept).float() + lam * (p_sp & kept).float()
    d = p_ag | neg | (p_sp if sp_in_denom else False)
    d = d if self_in else d & ~eye
    logits = z @ z.T / tau
    log_p = logits - logits.masked_fill(~d, float("-inf")).logsumexp(1, keepdim=True)
    terms = torch.where(w > 0, w * log_p, torch.zeros_like(log_p))
    if per_anchor:
        rows = w.sum(1) > 0
        loss = -(terms.sum(1)[rows] / w.sum(1)[rows]).mean()
    else:
        loss = -terms.sum() / w.sum()
    return loss * (tau / 0.07 if scale else 1.0)


def _paired(a, b, std):
    d = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.mean(d), std(d)


def _verdict(mean, std, k=2.0):
    return (
        mean,
        std,
        ("clear: above" if mean > 0 else "clear: below") if abs(mean) > k * std else "within the seed spread",
    )


def _cosine(codes, c):
    return F.normalize(codes, dim=1) @ F.normalize(c, dim=0)


def _capped(order, image_of, per_image, n):
    """The first n of `order` with at most `per_image` of one image (the ranking a student might cap wrongly)."""
    taken, kept = {}, []
    for idx in order.tolist():
        image = int(image_of[idx])
        if taken.get(image, 0) < per_image and len(kept) < n:
            taken[image] = taken.get(image, 0) + 1
            kept.append(idx)
    return torch.tensor(kept, dtype=torch.long)


WRONG = {  # the mistakes each exercise's `catches` names, one function each: every one must fail its check
    "cosine_map": [
        lambda f, a: torch.einsum("c,chw->hw", f[:, a[0], a[1]], f),  # no normalisation
        lambda f, a: torch.einsum("c,chw->hw", F.normalize(f, dim=1)[:, a[0], a[1]], F.normalize(f, dim=1)),  # dim
        lambda f, a: torch.einsum("c,chw->hw", F.normalize(f, dim=0)[:, a[1], a[0]], F.normalize(f, dim=0)),  # x/y
    ],
    "hungarian": [lambda conf: conf.argmax(1), _hungarian_transposed, _hungarian_minimised],
    "pool_rows": [
        lambda f, i: F.normalize(f.flatten(2)[:, :, i], dim=1),  # all M indices of every image
        lambda f, i: F.normalize(f.flatten(2).mean(2), dim=1),  # the image's mean feature
        lambda f, i: f.flatten(2)[torch.arange(len(f)), :, i],  # not normalised
        lambda f, i: F.normalize(f.flatten(2)[0, :, i].T, dim=1),  # all from the first image
    ],
    "criterion": [lambda x, p: (x @ p.T).mean(1), lambda x, p: (x @ p.T).amax(0)],
    "symmetric_mask": [
        lambda x, c: (x @ x.T > c[:, None]) & ~torch.eye(len(x), dtype=torch.bool),  # one-sided
        _sym_no_diag,  # the anchor kept
        lambda x, c: reference("symmetric_mask")(x, c).float(),  # a float mask
    ],
    "lhp_weights": [
        lambda a, g, s: _lhp(a.roll(1, (0, 1)), g, s),  # the CLS token left in (the last patch dropped instead)
        lambda a, g, s: _lhp(a, g, s, clip=False),  # no percentile clip
        lambda a, g, s: _lhp(a.T, g, s),  # query and key swapped
        lambda a, g, s: _lhp(a, g, s, wrap=True),  # windows wrap around the edge
    ],
    "mix_codes": [
        lambda s, w, d: _mix(s, w, torch.ones_like(d)),  # no division
        lambda s, w, d: _mix(s, w, d, sign=-1),  # the mirrored offset
    ],
    "lambda_schedule": [
        lambda t, T, w: 0.0 if t <= w else min(1.0, (t - w + 1) / (T - w)),  # off by one
        lambda t, T, w: t / T,  # a ramp over the whole run
    ],
    "phi_code_form": [
        lambda *a: _phi(*a, per_anchor=True),  # Eq. 5's mean per anchor first
        lambda *a: _phi(*a, sp_in_denom=True),  # the task-specific positives in the denominator
        lambda *a: _phi(*a, self_in=True),  # the anchor in its own denominator
        lambda *a: _phi(*a, scale=False),  # no τ/0.07
        lambda *a: _phi(*a, sym=False),  # one-sided positives
    ],
    "acc_miou": [
        lambda c: (100 * np.trace(c) / c.sum(), 100 * np.mean(np.diag(c) / c.sum(1))),  # no FN term
        lambda c: (np.trace(c) / c.sum(), np.mean(np.diag(c) / (c.sum(0) + c.sum(1) - np.diag(c)))),  # fractions
    ],
    "cluster_predict": [
        lambda s, c, size: torch.einsum("khw,nk->nhw", _up(s, size), c).argmax(0),  # centroids not normalised
        lambda s, c, size: torch.einsum("khw,nk->nhw", F.normalize(_up(s, size), dim=0), F.normalize(c, dim=1)).argmax(
            1
        ),  # the argmax over the wrong dimension
        lambda s, c, size: torch.einsum(  # nearest instead of bilinear
            "khw,nk->nhw", F.normalize(_up(s, size, "nearest"), dim=0), F.normalize(c, dim=1)
        ).argmax(0),
    ],
    "seed_spread": [lambda v: (statistics.mean(v), statistics.pstdev(v))],
    "paired_verdict": [
        lambda a, b: _verdict(
            statistics.mean(a) - statistics.mean(b), (statistics.stdev(a) ** 2 + statistics.stdev(b) ** 2) ** 0.5
        ),
        lambda a, b: _verdict(*_paired(a, b, statistics.pstdev)),  # the population std
        lambda a, b: _verdict(*_paired(a, b, statistics.stdev), k=1.0),  # a verdict at one std
    ],
    "overlay": [
        lambda im, lab, col, a: reference("overlay")(im, lab, col, 1 - a),  # α and 1 − α swapped
        lambda im, lab, col, a: ((1 - a) * im + a * col[lab]).round().astype(np.uint8),  # −1 takes the last colour
        lambda im, lab, col, a: np.where(  # truncated instead of rounded
            (lab >= 0)[..., None], ((1 - a) * im + a * col[lab.clip(0)]).astype(np.uint8), im
        ),
    ],
    "closest_patches": [
        lambda codes, c, n, image_of, k: _cosine(codes, c).topk(n).indices,  # no cap: one photo fills the strip
        lambda codes, c, n, image_of, k: _capped(_cosine(codes, c).topk(n).indices, image_of, k, n),  # cap after top n
        lambda codes, c, n, image_of, k: _capped((codes @ c).argsort(descending=True), image_of, k, n),  # long codes
        lambda codes, c, n, image_of, k: _capped(_cosine(codes, c).argsort(), image_of, k, n),  # farthest first
    ],
}


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_check_fails_on_plausible_wrong_answers(name, capsys):
    assert WRONG.get(name), f"no wrong answer tried for {name}"
    for wrong in WRONG[name]:
        assert not passes(name, wrong, verbose=True), f"{name}: a wrong answer passed"
        out = capsys.readouterr().out
        assert out.startswith(f"[FAIL] {name}") and ("expected" in out or "raised" in out), out


@pytest.mark.parametrize("seed", range(5))
def test_the_phi_exercise_is_what_hp_loss_computes(seed):
    """The exercise's reference is written out by hand; the code form of hp_loss (B = 1) must give the same Φ."""
    from hpnb.check import _phi_inputs
    from hpnb.losses import LossConfig, LossInputs, hp_loss

    z, f, s, c_ag, c_sp, neg, lam, tau = _phi_inputs(torch.Generator().manual_seed(seed))
    one = LossInputs(z=z[None], f=f[None], c_ag=c_ag[None], s_ema=s[None], c_sp=c_sp[None])
    packaged = hp_loss(one, LossConfig(form="code", tau=tau, use_lhp=False, use_reg=False), lam=lam, neg_mask=neg)
    by_hand = reference("phi_code_form")(z, f, s, c_ag, c_sp, neg, lam, tau)
    assert torch.isclose(by_hand, packaged.phi, rtol=1e-5), (by_hand, packaged.phi)


def test_the_pool_exercise_is_how_hpnb_samples_its_pools():
    """hpnb.positives.sample_patches_per_image draws one index per image and keeps exactly those rows."""
    from hpnb.positives import sample_patches_per_image

    f = torch.randn(7, 5, 3, 4)
    idx = torch.randint(12, (7,), generator=torch.Generator().manual_seed(0))
    drawn = sample_patches_per_image(f, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, reference("pool_rows")(f, idx))


def test_the_mistake_free_loop_version_of_phi_is_the_reference():
    """The WRONG versions of phi_code_form differ from a right one by one switch each: with none, it passes."""
    assert passes("phi_code_form", _phi)


def _quantiles_numpy(method):
    def quantiles(s):
        lo, hi = np.percentile(s.numpy(), [10, 90], axis=-1, method=method, keepdims=True)
        return torch.from_numpy(lo).float(), torch.from_numpy(hi).float()

    return quantiles


def _quantiles_kthvalue(s):
    n = s.shape[-1]
    lo = s.kthvalue(max(1, round(0.1 * n)), dim=-1, keepdim=True).values
    return lo, s.kthvalue(max(1, round(0.9 * n)), dim=-1, keepdim=True).values


def test_exercise_3_1_states_the_interpolation_its_check_accepts():
    """3.1 says: linear interpolation (torch.quantile's and np.percentile's default) passes, nearest or kthvalue fail."""
    statement = next(
        "".join(c["source"])
        for c in json.loads((ROOT / "notebooks" / "03_local_hidden_positives.ipynb").read_text())["cells"]
        if "".join(c["source"]).startswith("### Exercise 3.1")
    )
    assert "interpolate linearly" in statement and "kthvalue" in statement and 'method="nearest"' in statement
    assert passes("lhp_weights", lambda a, g, s: _lhp(a, g, s, quantiles=_quantiles_numpy("linear")))
    assert not passes("lhp_weights", lambda a, g, s: _lhp(a, g, s, quantiles=_quantiles_numpy("nearest")))
    assert not passes("lhp_weights", lambda a, g, s: _lhp(a, g, s, quantiles=_quantiles_kthvalue))


def test_the_paired_verdict_exercise_is_what_hpnb_report_computes():
    from hpnb.check import _paired_inputs
    from hpnb.report import verdict

    for seed in range(20):
        a, b = _paired_inputs(torch.Generator().manual_seed(seed))
        mean, std, said = reference("paired_verdict")(a, b)
        diffs = [x - y for x, y in zip(a, b, strict=True)]
        assert np.isclose(mean, statistics.mean(diffs)) and np.isclose(std, statistics.stdev(diffs))
        assert said == verdict(mean, std)


def test_the_paired_inputs_reach_both_verdicts_and_a_gain_the_unpaired_spread_hides():
    """Without cases of each kind the check could not tell a wrong spread or threshold from the right one."""
    from hpnb.check import _paired_inputs

    said, hidden = set(), 0
    for seed in range(3):  # the three cases a check runs
        a, b = _paired_inputs(torch.Generator().manual_seed(seed))
        said.add(reference("paired_verdict")(a, b)[2])
    for seed in range(50):
        a, b = _paired_inputs(torch.Generator().manual_seed(seed))
        mean, std, v = reference("paired_verdict")(a, b)
        hidden += (
            v.startswith("clear") and abs(mean) <= 2 * (statistics.stdev(a) ** 2 + statistics.stdev(b) ** 2) ** 0.5
        )
    assert len(said) >= 2 and hidden >= 5, (said, hidden)


def test_difference_names_shape_dtype_and_first_differing_entry():
    a = torch.zeros(3, 4)
    assert difference(a.clone(), a) is None
    assert "expected shape (3, 4), found shape (4, 3)" in difference(a.T, a)
    assert "dtype" in difference(a.bool(), a)
    b = a.clone()
    b[1, 2] = 5
    assert difference(b, a) == "at index (1, 2) expected 0, found 5 (1 of 12 entries differ)"
    assert "expected Tensor (3, 4) torch.float32, found list" in difference([0.0] * 12, a)
    assert difference((1.0, a), (1.0 + 1e-9, a)) is None and "item 0" in difference((2.0, a), (1.0, a))


def test_a_function_that_raises_is_reported_not_raised(capsys):
    assert check("criterion", lambda x, pool: x @ pool) is None  # a shape error: reported, not raised
    out = capsys.readouterr().out
    assert "[FAIL] criterion" in out and "raised RuntimeError" in out and "on inputs Tensor" in out
    with pytest.raises(KeyError, match="the exercises are: cosine_map"):
        check("no-such-exercise", print)
    assert passes("criterion", reference("criterion")) and not passes("criterion", lambda x, pool: x @ pool)


def test_student_edition_strips_solutions_and_their_outputs_and_keeps_every_other_cell(tmp_path):
    written = student.build(ROOT / "notebooks", tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in (ROOT / "notebooks").glob("0*.ipynb"))
    for path in written:
        src = json.loads((ROOT / "notebooks" / path.name).read_text())
        out = json.loads(path.read_text())
        assert len(src["cells"]) == len(out["cells"])
        for a, b in zip(src["cells"], out["cells"], strict=True):
            if "exercise" in a.get("metadata", {}).get("tags", []):
                assert b["outputs"] == [] and b["execution_count"] is None
                assert "END SOLUTION" not in "".join(b["source"]) and "NotImplementedError" in "".join(b["source"])
            else:
                assert a == b, f"{path.name}: a cell that is not an exercise changed"


def test_no_cell_after_an_exercise_uses_the_students_function():
    """A stuck student goes on: the rest of the notebook never calls what the exercise asked for (it uses hpnb)."""
    import re

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for k, cell in enumerate(cells):
            if "exercise" not in cell.get("metadata", {}).get("tags", []):
                continue
            fn = "".join(cell["source"]).split("def ", 1)[1].split("(", 1)[0]
            later = ["".join(c["source"]) for c in cells[k + 1 :] if c["cell_type"] == "code"]
            users = [s[:60] for s in later if re.search(rf"\b{fn}\b", s)]
            assert not users, f"{path.name}: cells after the exercise use {fn}: {users}"


def test_the_instructors_guide_lists_every_exercise_with_what_its_check_catches():
    guide = (ROOT / "docs" / "workshop.md").read_text()
    for ex in EXERCISES.values():
        assert f"| {ex.notebook} | `{ex.name}` |" in guide and ex.catches in guide, f"docs/workshop.md: {ex.name}"


@pytest.mark.parametrize("cell", [c for _, c in exercise_cells()], ids=lambda c: checked_name("".join(c["source"])))
def test_an_exercise_cell_only_defines_its_function_and_checks_it(cell):
    """What makes nbval's run with --student-and-prompts the student edition's run (./conftest.py): an exercise cell
    (solution or stub) binds nothing but its function and calls its check, so once the stub has run after it, the
    rest of the notebook runs in the namespace the student edition gives it (no later cell uses the function:
    test_no_cell_after_an_exercise_uses_the_students_function)."""
    import ast

    for source in ("".join(cell["source"]), student.strip_solution("".join(cell["source"]))):
        body = ast.parse(source).body
        defs = [s for s in body if isinstance(s, ast.FunctionDef)]
        calls = [s for s in body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)]
        imports = [s for s in body if isinstance(s, (ast.Import, ast.ImportFrom))]
        assert len(defs) == 1 and len(calls) == 1 and len(defs) + len(calls) + len(imports) == len(body), source
        call = calls[0].value
        assert ast.unparse(call.func) == "hpnb.check.check" and ast.unparse(call.args[1]) == defs[0].name, source


def test_the_student_tool_has_a_help_and_refuses_bad_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a --help read as a folder name would be created here
    with pytest.raises(SystemExit) as exit_help:
        student.main(["--help"])
    assert exit_help.value.code == 0 and "student edition" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as empty:
        student.main([str(tmp_path), str(tmp_path / "out")])
    assert empty.value.code == 2 and "holds no notebooks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as same:
        student.main([str(ROOT / "notebooks"), str(ROOT / "notebooks")])
    assert same.value.code == 2 and "would replace the solutions" in capsys.readouterr().err
    assert student.main([str(ROOT / "notebooks"), str(tmp_path / "out")]) == 0
    assert "exercises stubbed" in capsys.readouterr().out and any((tmp_path / "out").glob("0*.ipynb"))


def test_the_guides_teaching_times_are_what_the_notebooks_give_now():
    """docs/workshop.md's teaching times and schedules come from tools/teaching_times.py; a notebook edit that changes
    them fails here until the block is rewritten."""
    sys.path.insert(0, str(ROOT / "tools"))
    import teaching_times

    assert teaching_times.main(["--check"]) == 0, "run: python tools/teaching_times.py"
    est = teaching_times.estimate()
    assert sorted(est) == sorted(p.stem for p in (ROOT / "notebooks").glob("0*.ipynb"))
    for stem, parts in est.items():  # every section of every notebook is counted once, and the quiz is priced
        assert [t for t, _ in parts].count("Quiz") == 1 and all(m >= 1 for _, m in parts), stem
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):  # each notebook's first cell shows the same estimate
        head = "".join(json.loads(path.read_text())["cells"][0]["source"])
        total = teaching_times._hm(sum(m for _, m in est[path.stem]))
        assert f"teaching {total} in all" in head, f"{path.name}: run python tools/section_times.py"
    guide = (ROOT / "docs" / "workshop.md").read_text()
    for name, items in teaching_times.SCHEDULES.items():  # a schedule's total is the sum of its slots
        total = sum(teaching_times.slot(i, est)[1] for i in items)
        assert f"**{name}: {teaching_times._hm(total)}**" in guide, name


def test_hpnbs_similarity_map_is_exercise_1_1_for_every_image_of_a_batch():
    from hpnb.features import similarity_map

    feats = torch.randn(3, 6, 4, 5) * torch.rand(3, 1, 4, 5) * 3
    maps = similarity_map(feats, (2, 3), image=1)
    assert maps.shape == (3, 4, 5) and torch.isclose(maps[1, 2, 3], torch.tensor(1.0), atol=1e-6)
    assert torch.allclose(maps[1], reference("cosine_map")(feats[1], (2, 3)), atol=1e-6)
    unit = F.normalize(feats, dim=1)
    assert torch.allclose(maps[0], (unit[0] * unit[1, :, 2, 3, None, None]).sum(0), atol=1e-6)
