"""``pip install -e .`` and ``pip install .`` into fresh venvs: the ``reviosa`` command and the four
packages, from another directory.

The fresh venvs see this interpreter's site-packages through a ``.pth`` file (so torch and the
dependencies are not downloaded again) and install with ``--no-index``: the install fails if
pyproject.toml declares a dependency this environment does not satisfy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("reviosa", "viz", "train", "studio")


def _requirements(path: Path) -> list[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_pyproject_declares_the_requirements_files_pins_except_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirements(ROOT / "requirements.txt")
    assert [r for r in runtime if _name(r) != "torch"] == project["dependencies"]
    assert not any(_name(r) in ("torch", "sam2") for r in project["dependencies"])
    assert _requirements(ROOT / "requirements-dev.txt") == project["optional-dependencies"]["dev"]
    assert project["scripts"]["reviosa"] == "reviosa.cli:main"


def _fresh_venv(path: Path) -> Path:
    """A venv of this Python that imports this environment's packages after its own."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "_outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _pip_install(python: Path, *args) -> None:
    # --no-build-isolation: setuptools comes from the outer environment (no download); --no-index:
    # every declared dependency must already be satisfied.
    proc = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index", "--no-build-isolation", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def _where_imported(python: Path, cwd: Path) -> dict[str, str]:
    code = "import json, importlib; print(json.dumps({p: importlib.import_module(p).__file__ for p in %r}))"
    proc = subprocess.run(
        [python, "-c", code % (PACKAGES,)], cwd=cwd, capture_output=True, text=True, check=True
    )
    import json

    return json.loads(proc.stdout)


def _check_command(venv: Path, cwd: Path, run_one: bool = False) -> None:
    command = venv / "bin" / "reviosa"
    top = subprocess.run([command, "--help"], cwd=cwd, capture_output=True, text=True, check=True).stdout
    assert top.startswith("usage: reviosa ")
    for sub in ("predict", "synth", "evaluate", "convert"):
        assert sub in top
    predict = subprocess.run(
        [command, "predict", "--help"], cwd=cwd, capture_output=True, text=True, check=True
    )
    assert "--dataset" in predict.stdout and "--keyframe-strategy" in predict.stdout
    if run_one:  # the command runs, and bad input ends in one clear line (imports torch: a few seconds)
        bad = subprocess.run([command, "predict"], cwd=cwd, capture_output=True, text=True)
        assert bad.returncode == 2 and "error: give either VIDEO" in bad.stderr


@pytest.mark.slow
def test_editable_install_gives_the_command_and_the_packages_from_anywhere(tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "-e", str(ROOT))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _check_command(tmp_path / "venv", elsewhere, run_one=True)
    for package, file in _where_imported(python, elsewhere).items():
        assert Path(file) == ROOT / package / "__init__.py"  # editable: the checkout itself


@pytest.mark.slow
def test_wheel_install_carries_the_builtin_model_and_recipes(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    python = _fresh_venv(tmp_path / "venv")
    _pip_install(python, str(src))
    shutil.rmtree(src)  # the installed copy must stand alone
    _check_command(tmp_path / "venv", tmp_path)
    site = tmp_path / "venv" / "lib"
    for package, file in _where_imported(python, tmp_path).items():
        assert Path(file).is_relative_to(site), (package, file)
    code = "from reviosa.hub import resolve; import train, pathlib; print(resolve('builtin')); print(pathlib.Path(train.__file__).parent / 'recipes' / 'builtin.yaml')"
    builtin, recipe = subprocess.run(
        [python, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        installed = Path(builtin) / name
        assert installed.read_bytes() == (ROOT / "reviosa" / "builtin" / name).read_bytes()
    assert Path(recipe).read_text() == (ROOT / "train" / "recipes" / "builtin.yaml").read_text()
