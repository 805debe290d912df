"""Config, trainer, checkpoints (exact resume after SIGKILL), evaluation and bad input — tiny CPU runs."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hpnb import HpnbError
from hpnb.config import HPConfig, get_config, parse_overrides

TINY = dict(
    n_train=12,
    n_val=4,
    res=56,
    val_res=56,
    dim=8,
    pool_size=6,
    batch_size=4,
    epochs=2,
    aug_views=1,
    val_every=3,
    checkpoint_every=2,
    log_every=1,
    lam_warmup=1,
    renew_every=2,
    rho=0.3,
    crf=False,
)


def tiny_config(**kw) -> HPConfig:
    return get_config("toy", **{**TINY, **kw})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny toy run with a random-weight backbone (features of a 4×4 patch grid)."""
    from hpnb.backbones import load_backbone
    from hpnb.train import train

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("HPNB_CACHE")
    os.environ["HPNB_CACHE"] = str(cache)
    torch.manual_seed(0)
    backbone = load_backbone("dinov2_vits14_imgfocus", weights="random")
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_config(backbone_weights=None), out=out, backbone=backbone, progress=False)
    yield result, backbone
    if old is None:
        os.environ.pop("HPNB_CACHE", None)
    else:
        os.environ["HPNB_CACHE"] = old


# ---- config -------------------------------------------------------------------------------------------------


def test_presets_hold_the_official_values():
    coco, city, pots = get_config("cocostuff27"), get_config("cityscapes27"), get_config("potsdam3")
    assert (
        coco.dim,
        coco.pool_size,
        coco.tau,
        coco.rho,
        coco.ema_m,
        coco.lam_warmup,
        coco.renew_every,
        coco.epochs,
    ) == (512, 2048, 0.8, 0.02, 0.99, 1000, 100, 3)
    assert (city.tau, city.ema_m, city.renew_every, city.epochs) == (0.6, 0.999, 20, 30)
    assert (pots.dim, pots.pool_size, pots.tau, pots.rho, pots.alpha, pots.backbone) == (
        256,
        1024,
        0.4,
        1.0,
        0.0,
        "dino_vitb8",
    )
    assert coco.backbone_mode == "online" and get_config("camvid").backbone_mode == "cache"
    assert get_config("cocostuff27-cpu").batch_size < coco.batch_size


def test_overrides_from_python_and_cli_strings():
    cfg = get_config("toy", **parse_overrides(["tau=0.5", "use_lhp=false", "max_iters=None", "epochs=3"]))
    assert (cfg.tau, cfg.use_lhp, cfg.max_iters, cfg.epochs) == (0.5, False, None, 3)
    assert get_config("toy", tau=0.3).tau == 0.3


def test_unknown_preset_and_key_list_the_valid_ones():
    with pytest.raises(HpnbError, match="Known presets: cocostuff27, cityscapes27"):
        get_config("imagenet")
    with pytest.raises(HpnbError, match=r"Unknown config key\(s\) \['temperature'\].*tau"):
        get_config("toy", temperature=0.1)
    with pytest.raises(HpnbError, match="key=value"):
        parse_overrides(["tau"])
    with pytest.raises(HpnbError, match="expects a number"):
        get_config("toy", tau="warm")


# ---- training -----------------------------------------------------------------------------------------------


def test_a_run_writes_its_folder(tiny_run):
    result, _ = tiny_run
    out = result.out
    for name in ("config.json", "log.jsonl", "checkpoint.pt", "best.pt", "metrics.json", "loss.png"):
        assert (out / name).is_file(), name
    assert HPConfig.load(out / "config.json").dim == 8
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))  # 12 images / batch 4 = 3 iterations × 2 epochs
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert rows[0]["lam"] == 0.0 and rows[-1]["lam"] > 0  # warm-up, then the ramp
    assert "val" in rows[2] and result.best["step"] in (3, 6)
    from hpnb.runs import FORMAT

    for name in ("checkpoint.pt", "best.pt"):  # the checkpoint format, and the config it was trained under
        state = torch.load(out / name, weights_only=True)
        assert state["format"] == FORMAT and json.loads(state["meta"])["config"] == tiny_config().to_dict()
    assert not list(out.glob("*.part"))


def test_resume_after_sigkill_gives_the_same_final_weights(tmp_path):
    """Kill (SIGKILL) a run right after its step-2 checkpoint, resume, and compare with an uninterrupted run."""
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        from hpnb.backbones import load_backbone
        from hpnb.config import get_config
        from hpnb import train as T
        torch.manual_seed(0)
        backbone = load_backbone("dinov2_vits14_imgfocus", weights="random")
        cfg = get_config("toy", **{TINY!r})
        out, mode = sys.argv[1], sys.argv[2]
        if mode == "kill":
            save = T.Trainer.save
            def save_then_die(self, name):
                path = save(self, name)
                if name == T.CHECKPOINT and self.step == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                return path
            T.Trainer.save = save_then_die
        T.train(cfg, out=out, resume=(mode == "resume"), backbone=backbone, progress=False)
    """)
    (tmp_path / "run.py").write_text(script)
    env = {**os.environ, "HPNB_CACHE": str(tmp_path / "cache")}

    def run(out, mode):
        return subprocess.run(
            [sys.executable, str(tmp_path / "run.py"), str(out), mode],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert run(tmp_path / "full", "plain").returncode == 0
    killed = run(tmp_path / "cut", "kill")
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = run(tmp_path / "cut", "resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    log = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 7))  # no duplicated steps after the resume


def test_nan_loss_stops_with_the_step_and_saves_the_last_good_weights(tmp_path, monkeypatch, tiny_run):
    from hpnb import train as T

    _, backbone = tiny_run
    real = T.hp_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        parts = real(*args, **kwargs)
        if calls["n"] == 3:
            parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(T, "hp_loss", flaky)
    with pytest.raises(HpnbError, match=r"became nan at step 2.*last_good\.pt"):
        T.train(tiny_config(), out=tmp_path, backbone=backbone, progress=False)
    assert (tmp_path / "last_good.pt").is_file()


def test_gpu_out_of_memory_says_what_to_lower(tmp_path, monkeypatch, tiny_run):
    from hpnb import train as T

    _, backbone = tiny_run

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(T.Trainer, "train_step", oom)
    with pytest.raises(HpnbError, match="out of memory.*chunk_images.*batch_size"):
        T.train(tiny_config(), out=tmp_path, backbone=backbone, progress=False)


def test_too_small_a_dataset_is_a_clear_error(tmp_path, tiny_run):
    from hpnb.train import train

    _, backbone = tiny_run
    with pytest.raises(HpnbError, match="fewer than batch_size"):
        train(tiny_config(n_train=2), out=tmp_path, backbone=backbone, progress=False)
    with pytest.raises(HpnbError, match="pool_size M=50 needs at least M training images"):
        train(tiny_config(pool_size=50), out=tmp_path, backbone=backbone, progress=False)


# ---- checkpoints and runs -----------------------------------------------------------------------------------


def test_checkpoint_of_another_backbone_or_k_is_refused(tiny_run):
    from hpnb.train import load_checkpoint

    out = tiny_run[0].out
    with pytest.raises(HpnbError, match="dim is 8 there, 16 here"):
        load_checkpoint(out / "best.pt", tiny_config(dim=16))
    with pytest.raises(HpnbError, match="backbone is dinov2_vits14_imgfocus there, dino_vits8 here"):
        load_checkpoint(out / "best.pt", tiny_config(backbone="dino_vits8"))


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path):
    from hpnb.evaluate import load_run

    with pytest.raises(HpnbError, match="not an hpnb run folder.*python -m hpnb train"):
        load_run(tmp_path)


# ---- evaluation ---------------------------------------------------------------------------------------------


def test_kmeans_predictor_through_evaluate_matches_the_baseline_module(tiny_run):
    from hpnb.baseline import kmeans_baseline
    from hpnb.evaluate import evaluate, kmeans_predictor
    from hpnb.features import extract_features
    from hpnb.toyworld import ToyWorld

    _, backbone = tiny_run
    train_fs = extract_features(backbone, ToyWorld("train", n=12, res=56), progress=False)
    val_fs = extract_features(backbone, ToyWorld("val", n=4, res=56), progress=False)
    pred = kmeans_predictor(train_fs, 8, probe_steps=5)
    result = evaluate(pred, val_fs, 8)
    reference = kmeans_baseline(train_fs, val_fs, 8)
    assert result.scores["cluster"].acc == pytest.approx(reference.scores.acc)
    assert set(result.scores) == {"cluster", "linear"}


def test_evaluate_run_and_predict(tiny_run, monkeypatch):
    from hpnb.crf import crf_available
    from hpnb.evaluate import predict
    from hpnb.report import evaluate_run

    result, _ = tiny_run
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: tiny_run[1])
    summary = evaluate_run(result.out, split="val", crf=True, progress=False, workers=1)
    hp = summary["protocols"]["online"]["results"]["HP"]
    # the CRF is an optional extra: without pydensecrf evaluate_run goes on without the "+crf" heads
    heads = {"cluster", "linear"} | ({"cluster+crf", "linear+crf"} if crf_available() else set())
    assert set(hp) == heads | {"empty_clusters"}
    assert set(summary["protocols"]["converged"]["results"]) == {"HP", "raw features"}
    report = (result.out / "report_val.md").read_text()
    assert f"{hp['cluster']['acc']:.1f}" in report and (result.out / "qualitative_val.png").is_file()
    image = (np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)  # any size
    labels = predict(image, result.out, crf=True)
    assert labels.shape == (45, 70) and labels.min() >= 0 and labels.max() < 8


def test_train_or_load_trains_once_loads_after_and_never_overwrites_another_config(
    tmp_path, monkeypatch, tiny_run, capsys
):
    import hpnb.train as T

    _, backbone = tiny_run
    calls = []
    real_train = T.train
    monkeypatch.setattr(T, "train", lambda *a, **k: calls.append(k.get("resume")) or real_train(*a, **k))
    base = tiny_config()
    run = T.train_or_load(base, tmp_path / "nb", backbone=backbone)
    first = capsys.readouterr().out
    assert calls == [False] and first.startswith("nb: 6 steps; best on val at step") and not run.model.training
    assert run.out == tmp_path / "nb" and run.cfg == base
    T.train_or_load(base, tmp_path / "nb", backbone=backbone)  # finished: loads, prints the same line
    assert calls == [False] and capsys.readouterr().out == first
    other = tiny_config(epochs=1)  # a changed parameter: its own folder, the first run stays
    assert T.train_or_load(other, tmp_path / "nb", backbone=backbone).out.name.startswith("nb-")
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and folders[0] == "nb" and folders[1].startswith("nb-")
    assert HPConfig.load(tmp_path / "nb" / "config.json").epochs == 2
    assert capsys.readouterr().out.startswith(f"{folders[1]}: 3 steps")


def test_train_or_load_resumes_an_interrupted_run(tmp_path, monkeypatch, tiny_run):
    import hpnb.train as T

    _, backbone = tiny_run
    cfg = tiny_config()
    T.train(cfg, out=tmp_path / "nb", backbone=backbone, progress=False)
    state = torch.load(tmp_path / "nb" / "checkpoint.pt", weights_only=True)
    state["step"] = 4  # as if the run had stopped after its step-4 checkpoint
    torch.save(state, tmp_path / "nb" / "checkpoint.pt")
    calls = []
    real_train = T.train
    monkeypatch.setattr(T, "train", lambda *a, **k: calls.append(k.get("resume")) or real_train(*a, **k))
    T.train_or_load(cfg, tmp_path / "nb", backbone=backbone)
    assert calls == [True] and torch.load(tmp_path / "nb" / "checkpoint.pt", weights_only=True)["step"] == 6


def test_the_raw_features_probes_get_the_steps_of_the_selected_checkpoint(tiny_run, monkeypatch, tmp_path):
    """The baseline budget: the raw features' online probes train as many steps as the HP probes of the evaluated
    checkpoint (best.pt: the step selected on val), not as many as the whole run."""
    import shutil

    from hpnb import probes
    from hpnb.evaluate import evaluate_on_split

    result, backbone = tiny_run
    run = tmp_path / "run"
    shutil.copytree(result.out, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["best"]["step"] = 3  # selected on val at step 3 of 6
    (run / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: backbone)
    monkeypatch.setattr("hpnb.evaluate._memo", lambda key, make: make())  # fit every time: no baseline from disk
    budgets = []
    real = probes.fit_online_probes
    monkeypatch.setattr(
        probes, "fit_online_probes", lambda fs, n, steps, *a, **k: budgets.append(steps) or real(fs, n, steps, *a, **k)
    )
    best = evaluate_on_split(run, split="val", crf=False, progress=False).summary
    last = evaluate_on_split(run, split="val", crf=False, which="last", progress=False).summary
    assert budgets == [3, 6] and best["checkpoint_step"] == 3 and last["checkpoint_step"] == 6
    assert best["protocols"]["online"]["probe_steps"] == 3


def test_evaluate_on_split_can_keep_one_protocol_and_hp_rows_only(tiny_run, tmp_path, monkeypatch):
    """Notebook 06's run of (a) against (g) needs protocol (ii) on HP's rows only: the baselines are then neither
    fitted nor read, the full evaluation's HP numbers are unchanged, and a wrong protocol name is refused."""
    import shutil

    from hpnb import probes
    from hpnb.evaluate import evaluate_on_split
    from hpnb.utils import HpnbError

    result, backbone = tiny_run
    run = tmp_path / "run"
    shutil.copytree(result.out, run)
    monkeypatch.setattr("hpnb.backbones.load_backbone", lambda *a, **k: backbone)
    full = evaluate_on_split(run, split="val", crf=False, progress=False).summary
    (run / "cluster_mapping.json").unlink()
    monkeypatch.setattr(probes, "fit_online_probes", lambda *a, **k: pytest.fail("a baseline was fitted"))
    monkeypatch.setattr("hpnb.evaluate._memo", lambda *a, **k: pytest.fail("a baseline was read"))
    kept = evaluate_on_split(
        run, split="val", crf=False, progress=False, protocols=("converged",), raw_features=False
    ).summary
    assert list(kept["protocols"]) == ["converged"] and list(kept["protocols"]["converged"]["results"]) == ["HP"]
    assert kept["protocols"]["converged"]["results"]["HP"] == full["protocols"]["converged"]["results"]["HP"]
    assert not (run / "cluster_mapping.json").exists()  # the online probe's map is written only when it is scored
    with pytest.raises(HpnbError, match="protocols must be"):
        evaluate_on_split(run, split="val", crf=False, progress=False, protocols=("paper",))


# ---- the run folder: one config per folder, resume under the same config, NaN scores, damaged checkpoints --------


def copy_of(run, tmp_path):
    import shutil

    return shutil.copytree(run, tmp_path / "run")


def test_training_into_another_configs_folder_is_refused_before_anything_is_written(tiny_run, tmp_path):
    from hpnb.train import train

    result, backbone = tiny_run
    run = copy_of(result.out, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(HpnbError, match=r"holds the run of another config \(tau 0\.6 → 0\.5; saved → requested\)"):
        train(tiny_config(tau=0.5), out=run, backbone=backbone, progress=False)
    with pytest.raises(HpnbError, match=r"cannot resume .*\(epochs 2 → 3; saved → requested\)"):
        train(tiny_config(epochs=3), out=run, resume=True, backbone=backbone, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_may_change_only_what_does_not_change_the_weights(tiny_run, tmp_path):
    from hpnb.config import HPConfig
    from hpnb.train import train

    result, backbone = tiny_run
    run = copy_of(result.out, tmp_path)
    again = train(tiny_config(crf=True, workers=0), out=run, resume=True, backbone=backbone, progress=False)
    assert again.steps == 6 and again.best == result.best  # finished already: nothing retrained
    assert HPConfig.load(run / "config.json").crf is True  # the folder's config says what it now holds


def test_a_damaged_checkpoint_on_resume_names_the_file(tiny_run, tmp_path):
    from hpnb.train import train

    result, backbone = tiny_run
    run = copy_of(result.out, tmp_path)
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:1000])
    with pytest.raises(HpnbError, match=r"checkpoint\.pt is damaged: torch cannot read it.*delete it and train"):
        train(tiny_config(), out=run, resume=True, backbone=backbone, progress=False)


def nan_validation(monkeypatch, steps):
    """Make the validation scores of `steps` NaN (a cluster mIoU turned NaN)."""
    from hpnb import train as T

    real = T.Trainer.validate

    def validate(self):
        table = real(self)
        if self.step in steps:
            table["cluster"]["miou"], table["score"] = float("nan"), float("nan")
        return table

    monkeypatch.setattr(T.Trainer, "validate", validate)


def test_a_nan_validation_score_is_logged_and_never_selected(tiny_run, tmp_path, monkeypatch):
    from hpnb.runs import RunWarning, read_log
    from hpnb.train import train

    _, backbone = tiny_run
    nan_validation(monkeypatch, {6})  # step 3 is a number, step 6 is NaN: NaN > number is False, but say so
    with pytest.warns(RunWarning, match=r"validation score at step 6 is NaN \(cluster miou\).*never selected"):
        result = train(tiny_config(), out=tmp_path / "run", backbone=backbone, progress=False)
    assert result.best["step"] == 3 and (tmp_path / "run" / "best.pt").is_file()
    logged = {r["step"]: r["val"]["score"] for r in read_log(tmp_path / "run") if "val" in r}
    assert np.isfinite(logged[3]) and np.isnan(logged[6]) and (tmp_path / "run" / "loss.png").is_file()


def test_a_run_whose_scores_are_all_nan_says_so_and_writes_no_best_checkpoint(tiny_run, tmp_path, monkeypatch, capsys):
    import hpnb.train as T
    from hpnb.runs import RunWarning, load_run

    result, backbone = tiny_run
    run = copy_of(result.out, tmp_path)  # a finished run of this config: its best.pt must not outlive the retrain
    nan_validation(monkeypatch, {3, 6})
    with pytest.warns(RunWarning) as caught:
        again = T.train(tiny_config(), out=run, backbone=backbone, progress=False)
    said = [str(w.message) for w in caught]
    assert [m.split(":")[0] for m in said[:2]] == [
        f"the validation score at step {s} is NaN (cluster miou)" for s in (3, 6)
    ]
    assert "no checkpoint selected on val, every validation score was NaN (steps 3, 6)" in said[2]
    assert again.best == {"step": None, "score": None, "reason": "every validation score was NaN (steps 3, 6)"}
    assert json.loads((run / "metrics.json").read_text())["best"] == again.best and not (run / "best.pt").exists()
    with pytest.raises(HpnbError, match=r"no best\.pt: no checkpoint was selected on val because every validation"):
        load_run(run)
    with pytest.raises(HpnbError, match="every validation score was NaN"):  # notebooks: no silent fallback either
        T.train_or_load(tiny_config(), run, backbone=backbone)
    assert capsys.readouterr().out == ""
    assert load_run(run, which="last")[1].n_classes == 8  # the last weights, on request


def test_folder_for_keeps_another_configs_run_and_reuses_its_own(tmp_path):
    """train_or_load and the demo send a config to `out-<digest>` when `out` holds another config's run."""
    from hpnb.config import get_config
    from hpnb.train import folder_for

    cfg = get_config("toy")
    assert folder_for(cfg, tmp_path / "demo") == tmp_path / "demo"  # nothing there yet
    (tmp_path / "demo").mkdir()
    cfg.save(tmp_path / "demo" / "config.json")
    assert folder_for(cfg, tmp_path / "demo") == tmp_path / "demo"
    other = folder_for(get_config("toy", tau=0.3), tmp_path / "demo")
    assert other.parent == tmp_path and other.name.startswith("demo-") and len(other.name) == len("demo-") + 8
