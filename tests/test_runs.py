"""The run folder (hpnb.runs) without training: its config check, atomic files, the log, checkpoint formats and damage,
and how a run without best.pt is read. Each test builds a fake run folder in a few milliseconds."""

import json
import os
import re
import warnings

import numpy as np
import pytest
import torch

from hpnb import HpnbError
from hpnb.config import HPConfig, get_config
from hpnb.model import HPModel
from hpnb.runs import (
    BEST,
    CHECKPOINT,
    CONFIG,
    FORMAT,
    LOG,
    METRICS,
    RunWarning,
    append_log,
    check_run_folder,
    load_checkpoint,
    load_run,
    read_log,
    read_state,
    save_state,
    truncate_log,
)

SMALL = dict(dim=8, epochs=2, batch_size=4, n_train=12, n_val=4, res=56, val_res=56, crf=False)


def small(**kw) -> HPConfig:
    return get_config("toy", **{**SMALL, **kw})


def fake_state(cfg: HPConfig, step: int = 6, seed: int = 0) -> dict:
    """What the trainer saves, reduced to what a reader needs: the model, the step and the meta."""
    torch.manual_seed(seed)
    model = HPModel(16, cfg.dim, 3, cfg.dropout, cfg.form)
    meta = {"backbone": cfg.backbone, "dim": cfg.dim, "in_dim": 16, "n_classes": 3, "classes": ["a", "b", "c"]}
    meta.update(form=cfg.form, config=cfg.to_dict())
    return {"model": model.state_dict(), "step": step, "meta": json.dumps(meta)}


def fake_run(path, cfg=None, best=True, metrics=True):
    """A finished run folder: config.json, checkpoint.pt, best.pt and metrics.json (as the trainer leaves them)."""
    cfg = cfg or small()
    path.mkdir(parents=True, exist_ok=True)
    cfg.save(path / CONFIG)
    save_state(fake_state(cfg), path / CHECKPOINT)
    if best:
        save_state(fake_state(cfg, step=3), path / BEST)
    if metrics:
        (path / METRICS).write_text(json.dumps({"best": {"score": 1.0, "step": 3}, "last": {}}))
    return path


# ---- fault 1 and 2: a folder belongs to one config ------------------------------------------------------------


def test_another_configs_folder_is_refused_with_the_differing_fields(tmp_path):
    small().save(tmp_path / CONFIG)
    with pytest.raises(HpnbError) as err:
        check_run_folder(tmp_path, small(tau=0.5, epochs=3))
    msg = str(err.value)
    assert "holds the run of another config (tau 0.6 → 0.5, epochs 2 → 3; saved → requested)" in msg
    assert f"--out {tmp_path}-new" in msg and "--resume" in msg
    check_run_folder(tmp_path, small())  # the same config passes (trained again from step 0)
    check_run_folder(tmp_path / "empty", small(tau=0.5))  # so does a folder that does not exist yet


def test_resume_compares_the_whole_config_and_lets_only_runtime_fields_differ(tmp_path):
    small().save(tmp_path / CONFIG)
    with pytest.raises(HpnbError, match=r"cannot resume .*epochs 2 → 3; saved → requested.*λ's ramp"):
        check_run_folder(tmp_path, small(epochs=3), resume=True)
    with pytest.raises(HpnbError, match=r"alpha 0\.05 → 0\.1, use_sp true → false"):
        check_run_folder(tmp_path, small(alpha=0.1, use_sp=False), resume=True)
    check_run_folder(tmp_path, small(crf=True, workers=2, crf_workers=1), resume=True)  # do not change the weights
    with pytest.raises(HpnbError, match="another config"):  # without --resume any difference is another config
        check_run_folder(tmp_path, small(crf=True))


def test_a_checkpoint_of_another_config_is_refused_even_when_config_json_was_replaced(tmp_path):
    save_state(fake_state(small()), tmp_path / CHECKPOINT)
    with pytest.raises(HpnbError, match=r"written under another config than this one \(tau 0\.6 → 0\.3"):
        load_checkpoint(tmp_path / CHECKPOINT, small(tau=0.3))
    assert load_checkpoint(tmp_path / CHECKPOINT, small(crf=True))["step"] == 6


def test_run_files_without_config_json_are_not_written_over(tmp_path):
    (tmp_path / LOG).write_text('{"step": 1}\n')
    with pytest.raises(HpnbError, match=r"holds run files \(log\.jsonl\) but no config\.json"):
        check_run_folder(tmp_path, small())


def test_a_damaged_or_newer_config_json_is_a_clear_error(tmp_path):
    (tmp_path / CONFIG).write_text('{"dim": 8, "ta')
    with pytest.raises(HpnbError, match=r"config\.json is damaged \(not valid JSON"):
        check_run_folder(tmp_path, small())
    (tmp_path / CONFIG).write_text(json.dumps({**small().to_dict(), "warp_drive": 1}))
    with pytest.raises(HpnbError, match=r"keys this hpnb does not know: \['warp_drive'\].*Update hpnb"):
        HPConfig.load(tmp_path / CONFIG)


# ---- fault 3: atomic files and a log that survives a torn line --------------------------------------------------


def test_config_json_is_written_atomically_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    small().save(tmp_path / CONFIG)
    before = (tmp_path / CONFIG).read_text()
    real = type(tmp_path).write_text

    def full_disk(self, text, *a, **k):
        real(self, text[:10], *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tmp_path), "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        small(tau=0.1).save(tmp_path / CONFIG)
    monkeypatch.undo()
    assert (tmp_path / CONFIG).read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == [CONFIG]


def test_read_log_drops_a_torn_last_line_with_a_warning(tmp_path):
    for step in (1, 2):
        append_log(tmp_path, {"step": step, "loss": 1.0 / step})
    with open(tmp_path / LOG, "a") as fh:
        fh.write('{"step": 3, "lo')  # the run stopped while writing its third line
    with pytest.warns(RunWarning, match=r"dropped its last line, line 3 \(not valid JSON: .*the 2 logged steps"):
        rows = read_log(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    with pytest.warns(RunWarning):
        truncate_log(tmp_path, 2)  # what a resume does: the log is rewritten whole, without the torn line
    assert (tmp_path / LOG).read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_log(tmp_path)) == 2
    assert not list(tmp_path.glob("*.part"))


def test_read_log_names_the_file_and_line_of_damage_in_the_middle(tmp_path):
    (tmp_path / LOG).write_text('{"step": 1}\n{"step": 2, "loss": \x00\x17}\n{"step": 3}\n')
    with pytest.raises(HpnbError, match=r"log\.jsonl is damaged at line 2 \(not valid JSON: .*Delete that line"):
        read_log(tmp_path)
    (tmp_path / LOG).write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')
    with pytest.raises(HpnbError, match=r"damaged at line 2 \(not a logged step"):
        read_log(tmp_path)


# ---- fault 4: a failed save leaves the old checkpoint and no .part --------------------------------------------


def test_a_failed_save_leaves_no_part_file_and_the_old_checkpoint_intact(tmp_path, monkeypatch):
    cfg = small()
    save_state(fake_state(cfg, step=4), tmp_path / CHECKPOINT)
    old = (tmp_path / CHECKPOINT).read_bytes()

    def disk_full(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_state(fake_state(cfg, step=6), tmp_path / CHECKPOINT)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [CHECKPOINT]  # no .part
    assert (tmp_path / CHECKPOINT).read_bytes() == old and read_state(tmp_path / CHECKPOINT)["step"] == 4


# ---- faults 5 and 6: checkpoint format and damage ----------------------------------------------------------------


def test_checkpoints_carry_a_format_and_old_ones_without_it_still_load(tmp_path):
    cfg = fake_run(tmp_path / "run").joinpath(CONFIG)
    assert read_state(tmp_path / "run" / CHECKPOINT)["format"] == FORMAT
    for name in (CHECKPOINT, BEST):  # a checkpoint from before the field: read as format 1
        state = read_state(tmp_path / "run" / name)
        del state["format"]
        torch.save(state, tmp_path / "run" / name)
    assert cfg.is_file() and load_run(tmp_path / "run")[1].n_classes == 3


@pytest.mark.parametrize("fmt, message", [(FORMAT + 1, "newer than this hpnb reads.*Update hpnb"), (0, "older than")])
def test_a_checkpoint_of_another_format_is_refused(tmp_path, fmt, message):
    torch.save({**fake_state(small()), "format": fmt}, tmp_path / CHECKPOINT)
    with pytest.raises(HpnbError, match=rf"checkpoint\.pt has checkpoint format {fmt}, {message}"):
        load_checkpoint(tmp_path / CHECKPOINT, small())


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty"])
def test_a_damaged_checkpoint_names_the_file_and_what_to_do(tmp_path, damage):
    run = fake_run(tmp_path / "run")
    whole = (run / CHECKPOINT).read_bytes()
    data = {"truncated": whole[: len(whole) // 2], "random bytes": os.urandom(300), "empty": b""}[damage]
    (run / CHECKPOINT).write_bytes(data)
    with pytest.raises(HpnbError) as err:
        load_run(run, which="last")
    msg = str(err.value)
    assert f"{run / CHECKPOINT} is damaged: torch cannot read it" in msg
    assert f"delete it and train the run again (python -m hpnb train ... --out {run} --resume" in msg
    (run / BEST).write_bytes(data)
    with pytest.raises(HpnbError, match=r"best\.pt is damaged.*--checkpoint last"):
        load_run(run)


def test_any_random_bytes_as_a_checkpoint_are_named_damaged(tmp_path):
    """torch's weights-only unpickler raises a different exception type depending on the bytes (IndexError,
    KeyError, EOFError, ...): each of 300 seeded random files is the same clear error."""
    rng = np.random.default_rng(0)
    path = tmp_path / CHECKPOINT
    seen = set()
    for size in rng.integers(1, 2000, size=300):
        path.write_bytes(rng.integers(0, 256, size=size, dtype=np.uint8).tobytes())
        with pytest.raises(HpnbError, match=r"checkpoint\.pt is damaged: torch cannot read it") as err:
            read_state(path)
        seen.add(type(err.value.__cause__).__name__)
    assert len(seen) >= 2, seen  # the bytes did reach more than one failure path of torch's reader


# ---- fault 7: no best.pt is said, never silently replaced -------------------------------------------------------


def test_load_run_says_why_there_is_no_best_checkpoint(tmp_path):
    nan_run = fake_run(tmp_path / "nan", best=False, metrics=False)
    reason = "every validation score was NaN (steps 3, 6)"
    (nan_run / METRICS).write_text(json.dumps({"best": {"step": None, "score": None, "reason": reason}, "last": {}}))
    with pytest.raises(HpnbError, match=rf"no best\.pt: .*because {re.escape(reason)}.*--checkpoint last"):
        load_run(nan_run)
    assert load_run(nan_run, which="last")[1].n_classes == 3  # the last state is there, on request
    lost = fake_run(tmp_path / "lost", best=False)
    with pytest.raises(HpnbError, match=r"metrics\.json says step 3 was selected on val: the file was deleted"):
        load_run(lost)
    unfinished = fake_run(tmp_path / "unfinished", best=False, metrics=False)
    with pytest.warns(RunWarning, match=r"no best\.pt yet .*loading checkpoint\.pt, the last state \(step 6\)"):
        load_run(unfinished)
    with pytest.raises(HpnbError, match="which must be 'best'"):
        load_run(unfinished, which="first")
