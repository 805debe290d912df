"""The notebooks' "Try it yourself" prompts (PROMPTS) and the plan of the re-run that tries each one
(`prompt_cells`): apply the prompt's change to a copy of its cell and re-run from the changed cell to the end of its
section; a prompt that only adds a cell runs just that cell after the notebook, as a student does who has run the
notebook and then types it (tests/test_prompts.py checks that nothing the new cell reads is rebound after the place
the prompt names). `make test` runs these plans in each notebook's nbval kernel, after the notebook (./conftest.py,
--student-and-prompts).

Run as a script, it does the same for one notebook in a process of its own, with the notebook's student edition
(tools/student.py) run top to bottom first, and writes what happened to a JSON file: errors, the outputs of each
re-run, the kernel's exit status (a kernel killed by a signal shows it: -9 is SIGKILL, e.g. the OOM killer) and peak
memory. Use it to look at one notebook alone, e.g. after a kernel died:

    python tests/notebook_session.py 05 /tmp/session05.json
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


NBVAL_PROGRESS = "HPNB_NBVAL_PROGRESS"  # the folder where nbval's run marks each notebook done (--nbval-progress)


def wait_until_nbval_ran(name: str, poll_s: float = 2.0, timeout_s: float = 3600.0) -> float:
    """When $HPNB_NBVAL_PROGRESS names a folder (`make test`: a test that runs beside nbval and needs a notebook's
    caches warm), wait until nbval has run notebook `name` (its marker) or has ended (the file `finished`, written by
    the Makefile whatever nbval's status); returns the seconds waited. Without the variable: 0, no wait."""
    folder = os.environ.get(NBVAL_PROGRESS)
    if not folder:
        return 0.0
    start = time.perf_counter()
    while not (Path(folder) / name).exists() and not (Path(folder) / "finished").exists():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"nbval did not run {name} within {timeout_s:g} s (no marker in {folder})")
        time.sleep(poll_s)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Prompt:
    notebook: str  # the two-digit prefix of the notebook
    number: int  # its place in the notebook's "Try it yourself" list
    mentions: str  # text the prompt shows (the change a student makes), found in the "Try it yourself" section
    through: str | None = None  # the section (its heading starts so) that a re-run ends with, or that a new cell
    # follows; None: the whole body
    replace: tuple[str, str] | None = None  # (old, new) in the one code cell that contains `old`
    code: str | None = None  # a new cell run at the end of that section
    expect: str | None = None  # text that must appear in the outputs
    needs_camvid: bool = False


GET_CONFIG_TAIL = '"toy-notebook",'  # in the get_config call of notebooks 04-06
PROMPTS = [
    Prompt(
        "00",
        1,
        'print(hpnb.config.get_config("toy", tau=0.4))',
        "## Glossary",
        code='print(hpnb.config.get_config("toy", tau=0.4))',
        expect="tau=0.4",
    ),
    Prompt(
        "00",
        2,
        "RES = 392",
        "## Environment check",
        replace=("RES = 224", "RES = 392"),
        expect="feats (1, 384, 28, 28)",
    ),
    Prompt(
        "00",
        3,
        "hpnb.toyworld.make_scene(7)",
        "## Environment check",
        code="image, labels = hpnb.toyworld.make_scene(7)\nprint(len(np.unique(labels)), 'classes')",
        expect="classes",
    ),
    Prompt(
        "01", 1, "PATCH = (10, 9)", "## 2.", replace=("PATCH = (7, 9)", "PATCH = (10, 9)"), expect="anchor class: car"
    ),
    Prompt("01", 2, "TAU = 0.1", "## 4.", replace=("TAU = 0.6", "TAU = 0.1"), expect="(τ = 0.1)"),
    Prompt(
        "01",
        3,
        "n_clusters=16",
        "## 5.",
        replace=(
            "base = hpnb.baseline.kmeans_baseline(train_fs, val_fs, n_classes=len(CLASSES))",
            "base = hpnb.baseline.kmeans_baseline(train_fs, val_fs, n_classes=len(CLASSES), n_clusters=16)",
        ),
    ),
    Prompt("01", 4, "PATCH = (1, 8)", "## 3.", replace=("PATCH = (7, 9)", "PATCH = (1, 8)")),
    Prompt(
        "02", 1, "POOL_SIZE = 256", "## 3.", replace=("POOL_SIZE = 64", "POOL_SIZE = 256"), expect="Q_ag: (256, 384)"
    ),
    Prompt(
        "02",
        2,
        'fig5(*fig5_data("toy"), seed=1)',
        "## 4.",
        code='fig5(*fig5_data("toy"), seed=1)\nplt.show()\nfig5(*fig5_data("toy"), M=16)\nplt.show()',
    ),
    Prompt("02", 3, "DIM = 16", "## 6.", replace=("DIM = 64", "DIM = 16"), expect="Q_sp: (64, 16)"),
    Prompt(
        "02",
        4,
        'DATASET = "camvid"',
        "## 5.",
        replace=('DATASET = "toy"', 'DATASET = "camvid"'),
        expect="CamVid/val: 101 images",
        needs_camvid=True,
    ),
    Prompt("03", 1, "ANCHOR = (9, 4)", "## 1.", replace=("IMAGE, ANCHOR = 0, (5, 9)", "IMAGE, ANCHOR = 0, (9, 4)")),
    Prompt("03", 2, "MIN_DROPPED = 5", "## 2.", replace=("MIN_DROPPED = 3", "MIN_DROPPED = 5")),
    Prompt("03", 3, 'LHP_FORM = "paper"', "## 3.", replace=('LHP_FORM = 8, "code"', 'LHP_FORM = 8, "paper"')),
    Prompt("03", 4, "B_DEMO = 4", "## 4.", replace=("B_DEMO = 2 ", "B_DEMO = 4 "), expect="1024 anchors"),
    Prompt(
        "04", 1, 'form="paper"', None, replace=(GET_CONFIG_TAIL, GET_CONFIG_TAIL + ' form="paper",'), expect="nb04_toy-"
    ),
    Prompt(
        "04",
        2,
        "lam_warmup=30",
        "## 4.",
        replace=(GET_CONFIG_TAIL, GET_CONFIG_TAIL + " lam_warmup=30,"),
        expect="'lam_warmup': 30",
    ),
    Prompt(
        "04",
        3,
        "ema_m=0.9",
        "## 5.",
        replace=(GET_CONFIG_TAIL, GET_CONFIG_TAIL + " ema_m=0.9,"),
        expect="m = 0.9: distance to S shrinks by 0.90",
    ),
    Prompt("04", 4, "LAM = 0.0", "## 2.", replace=("LAM = 0.5 ", "LAM = 0.0 ")),
    Prompt("04", 4, "LAM = 1.0", "## 2.", replace=("LAM = 0.5 ", "LAM = 1.0 ")),
    Prompt(
        "05",
        1,
        'load_run(run.out, which="last")',
        "## 4.",
        code='last_cfg, last = hpnb.evaluate.load_run(run.out, which="last")\n'
        "print(hpnb.evaluate.evaluate(hpnb.evaluate.model_predictor(last), val, C).table())",
        expect="cluster",
    ),
    Prompt(
        "05",
        2,
        "fit_online_probes(train_fs, C, 10 * steps",
        "## 8.",
        code="more = hpnb.probes.fit_online_probes(train_fs, C, 10 * steps, cfg.batch_size, cfg.linear_lr, "
        "cfg.cluster_lr, cfg.seed)\n"
        "r = hpnb.evaluate.evaluate(hpnb.evaluate.Predictor(lambda f: f.float(), *more), val, C)\n"
        "print(r.table(), r.empty_clusters)",
        expect="cluster",
    ),
    Prompt(
        "05",
        3,
        "epochs=6",
        "## 5.",
        replace=(GET_CONFIG_TAIL, GET_CONFIG_TAIL + " epochs=6,"),
        expect="72 steps",
    ),
    Prompt(
        "06",
        1,
        "fig6 = ",
        "## 2.",
        code='fig6 = {t: hpnb.train.train_or_load(dataclasses.replace(cfg, **ABLATION, tau=t), RUNS / f"nb06_tau{t}", '
        "backbone=bb) for t in (0.2, 0.6, 1.0)}\n"
        'miou = [json.loads((r.out / "metrics.json").read_text())["best"]["cluster"]["miou"] for r in fig6.values()]\n'
        'plt.plot(list(fig6), miou, "o-"); plt.xlabel("τ"); plt.ylabel("val cluster mIoU (%)"); plt.show()',
        expect="nb06_tau0.2",
    ),
    Prompt(
        "06",
        2,
        "seed=1",
        "## 1.",
        code='hpnb.train.train_or_load(dataclasses.replace(cfg, **ABLATION, seed=1), RUNS / "nb06_full", backbone=bb)',
        expect="nb06_full-",
    ),
    Prompt(
        "06",
        3,
        'SWITCHES["(h) loss propagation"] = ("loss_prop", dict(propagation="loss"))',
        "## 1.",
        replace=(
            "}  # name: (run folder nb06_*, switch)",
            "}  # name: (run folder nb06_*, switch)\n"
            'SWITCHES["(h) loss propagation"] = ("loss_prop", dict(propagation="loss"))',
        ),
        expect="(h) loss propagation",
    ),
    Prompt(
        "07",
        1,
        "Set `FOLDER` to a folder of your own photos",
        "## 1.",
        replace=("FOLDER = None", 'FOLDER = hpnb.utils.repo_root() / "data" / "datasets" / "example_folder"'),
        expect="35 training images",
    ),
    Prompt(
        "07",
        2,
        "Change `N_CLUSTERS` to 4",
        "## 2.",
        replace=("N_CLUSTERS = 8", "N_CLUSTERS = 4"),
        expect="nb07_folder-",
    ),
    Prompt(
        "07",
        3,
        'shutil.copytree(folder, "/tmp/bad_folder")',
        "## 1.",
        code="import pathlib, shutil\nfrom PIL import Image\n"
        'shutil.copytree(folder, "/tmp/bad_folder", dirs_exist_ok=True)\n'
        'pathlib.Path("/tmp/bad_folder/notes.jpg").write_text("not an image")\n'
        'pathlib.Path("/tmp/bad_folder/empty.jpg").write_bytes(b"")\n'
        'Image.new("RGB", (10, 10)).save("/tmp/bad_folder/tiny.png")\n'
        'hpnb.data.get_dataset("folder", "train", root="/tmp/bad_folder")',
        expect="skipped 2 of",
    ),
]


def _notebook(prefix: str) -> Path:
    (path,) = NOTEBOOKS.glob(f"{prefix}_*.ipynb")
    return path


def _text(cell: dict) -> str:
    return "".join(cell["source"])


def _try_it_yourself(cells: list[dict]) -> str:
    """The text of the notebook's "Try it yourself" section."""
    text = "\n".join(_text(c) for c in cells if c["cell_type"] == "markdown")
    return text.split("## Try it yourself", 1)[1].split("\n## ", 1)[0]


def _heading(cell: dict, prefix: str) -> bool:
    """Whether a markdown cell holds a heading line that starts with `prefix` (anywhere in the cell)."""
    return cell["cell_type"] == "markdown" and any(line.startswith(prefix) for line in _text(cell).splitlines())


def _cells_through(cells: list[dict], through: str | None) -> list[dict]:
    """The cells from the top to the end of the section whose heading starts with `through` (None: the whole body)."""
    if through is None:
        return cells[: next(i for i, c in enumerate(cells) if _heading(c, "## Summary"))]
    start = next(i for i, c in enumerate(cells) if _heading(c, through))
    return cells[: next((i for i, c in enumerate(cells) if i > start and _heading(c, "## ")), len(cells))]


def prompt_cells(cells: list[dict], prompt: Prompt) -> tuple[int, list[dict]]:
    """(where the plan starts, the cells a student runs for `prompt`): for a change, the changed cell through the end
    of the named section, with the change applied, then the prompt's new cell if it has one; for a new cell only,
    that cell, placed at the end of the named section."""
    body = _cells_through(cells, prompt.through)
    rerun = []
    if prompt.replace:
        old, new = prompt.replace
        (start,) = [i for i, c in enumerate(body) if c["cell_type"] == "code" and old in _text(c)]
        for i in range(start, len(body)):
            cell = json.loads(json.dumps(body[i]))
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
            cell["source"] = _text(cell).replace(old, new) if i == start else _text(cell)
            rerun.append(cell)
    else:
        start = len(body)
    if prompt.code:
        rerun.append(
            {"cell_type": "code", "metadata": {}, "source": prompt.code, "outputs": [], "execution_count": None}
        )
    return start, rerun


def prompt_id(prompt: Prompt) -> str:
    return f"{prompt.notebook}-{prompt.number}-{prompt.mentions[:24]}"


def _output_text(cell) -> str:
    return json.dumps([o for o in cell.get("outputs", [])], ensure_ascii=False)


def _needs_missing_data(prompt: Prompt) -> str | None:
    if prompt.needs_camvid:
        from hpnb.data import CamVid, data_root

        if not CamVid.has_layout(data_root("camvid")):
            return "needs CamVid (python -m hpnb download camvid --root data/datasets/camvid)"
    return None


def run_session(prefix: str, path: Path | None = None, prompts: list[Prompt] | None = None) -> dict:
    """Run notebook `prefix`'s student edition and then its prompts in one kernel; return what happened. `path` and
    `prompts` replace the notebook file and its PROMPTS entries (tests of this runner)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    sys.path.insert(0, str(ROOT / "tools"))
    import student

    t0 = time.perf_counter()
    source = json.loads((path or _notebook(prefix)).read_text())
    nb = nbformat.reads(json.dumps(student.student_notebook(source)), as_version=4)
    n_cells = len(nb.cells)
    result = {"notebook": prefix, "student": None, "prompts": {}, "kernel": {}}
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})

    def run(cells: list, index: int) -> None:
        for k, cell in enumerate(cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, index + k)

    def failure(exc: BaseException) -> str:
        if isinstance(exc, CellExecutionError):
            return str(exc)[-3000:]
        return "".join(traceback.format_exception(exc))[-3000:]

    dead = None
    with client.setup_kernel():
        t = time.perf_counter()
        try:
            run(nb.cells[:n_cells], 0)
            error = None
        except (CellExecutionError, DeadKernelError) as exc:
            error, dead = failure(exc), isinstance(exc, DeadKernelError)
        exercises = [
            "".join(o.get("text", ""))
            for c in nb.cells[:n_cells]
            if "exercise" in c.metadata.get("tags", [])
            for o in c.outputs
        ]
        result["student"] = {"error": error, "exercise_outputs": exercises, "seconds": time.perf_counter() - t}

        prompts = [p for p in PROMPTS if p.notebook == prefix] if prompts is None else prompts
        planned = sorted(((*prompt_cells(source["cells"], p), p) for p in prompts), key=lambda x: -x[0])
        for start, cells, prompt in planned:
            entry = {"first_cell": start, "cells": len(cells), "error": None, "skipped": None, "outputs": ""}
            result["prompts"][prompt_id(prompt)] = entry
            if error is not None or dead:
                entry["skipped"] = "not run: the student edition failed or the kernel died before this prompt"
                continue
            if reason := _needs_missing_data(prompt):
                entry["skipped"] = reason
                continue
            t = time.perf_counter()
            nodes = [nbformat.from_dict(c) for c in cells]
            index = len(nb.cells)
            nb.cells.extend(nodes)
            try:
                run(nodes, index)
            except (CellExecutionError, DeadKernelError) as exc:
                entry["error"], dead = failure(exc), isinstance(exc, DeadKernelError)
            entry["outputs"] = "".join(_output_text(c) for c in nodes if c.cell_type == "code")
            entry["seconds"] = time.perf_counter() - t
        process = getattr(client.km.provisioner, "process", None)
    # the kernel has been shut down and waited for by this process: its exit status and peak memory are known
    result["kernel"] = {
        "died": bool(dead),
        "returncode": None if process is None else process.returncode,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "session_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str]) -> int:
    prefix, out = argv
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")  # a kernel that crashes prints where (its stderr is ours)
    result = run_session(prefix)
    tmp = Path(f"{out}.part")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
