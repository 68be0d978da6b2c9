"""``python -m studio.deploy``: what goes to a Space or a model repo (dry runs, no network), that the
staged Space starts from its own files, that a model repo's files load by hub id from the Hub's
cache layout, and the ``.gitattributes`` a git push to the Hub needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from studio import deploy

ROOT = Path(__file__).resolve().parent.parent
NOT_FOR_THE_SPACE = ("tests/", "results/", "runs/", "docs/", "bench/", "train/", "scripts/", "data/")


def offline_env(tmp_path: Path) -> dict:
    """No token anywhere, and the hub client refuses the network."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PYTHONPATH")
    }
    return {**env, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_deploy(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio.deploy", *args],
        cwd=ROOT, env=offline_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def listed(stdout: str) -> dict[str, bool]:
    """path -> goes through LFS/Xet, from the dry run's file lines."""
    rows = re.findall(r"^\s+[\d.]+ [KM]?B\s+(LFS/Xet)?\s+(\S+)$", stdout, re.MULTILINE)
    return {path: bool(lfs) for lfs, path in rows}


def test_space_dry_run_lists_what_the_space_runs_and_nothing_else(tmp_path):
    proc = run_deploy(tmp_path, "--space", "someone/reviosa-studio", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    files = listed(proc.stdout)
    for needed in ("app.py", "README.md", "requirements.txt", "requirements-sam2.txt", ".gitattributes",
                   "studio/service.py", "viz/overlay.py", "reviosa/hub.py", "reviosa/builtin/config.json"):  # fmt: skip
        assert files.get(needed) is False, needed
    assert files["reviosa/builtin/model.safetensors"] is True
    videos = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*.mp4"))
    assert videos and all(files[v] is True for v in videos)
    assert not [
        p for p in files if p.startswith(NOT_FOR_THE_SPACE) or "__pycache__" in p or p.endswith(".pyc")
    ]
    sizes = sum((ROOT / p).stat().st_size for p in files)
    assert f"space someone/reviosa-studio: {len(files)} files, " in proc.stdout
    assert deploy.space_plan("someone/reviosa-studio").total == sizes
    assert "variable REVIOSA_ALLOW_MODEL_CHOICE=no" in proc.stdout and "nothing uploaded" in proc.stdout


def test_the_staged_space_starts_from_its_own_files(tmp_path):
    """Import app.py in a folder holding only the plan's files: the demo builds, and every module of
    ours it loaded (the lazy ones are covered by the import scan) comes from that folder."""
    plan = deploy.space_plan("someone/reviosa-studio")
    space = deploy.stage(plan, tmp_path / "space")
    ours = sorted(deploy.first_party(ROOT))
    code = f"""
import sys, gradio as gr
import app
assert isinstance(app.demo, gr.Blocks)
loaded = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] in {ours!r} and getattr(m, "__file__", None)]
outside = [f for f in loaded if not f.startswith({str(space)!r})]
assert not outside, outside
print(len(loaded), "modules")
"""
    env = offline_env(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=space, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (space / "train").exists() and not (space / "tests").exists()
    needed = deploy.space_packages(ROOT)
    for path in space.rglob("*.py"):
        imported = deploy.imported_top_levels(path.read_text(), str(path)) & deploy.first_party(ROOT)
        assert imported <= set(needed), (path, imported)


def test_deploy_without_a_token_says_how_to_get_one(tmp_path):
    proc = run_deploy(tmp_path, "--space", "someone/reviosa-studio")
    assert proc.returncode == 2
    assert "HF_TOKEN" in proc.stderr and "hf auth login" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_ids_and_space_cards_are_refused_with_what_to_do(tmp_path):
    proc = run_deploy(tmp_path, "--space", "no-slash", "--dry-run")
    assert proc.returncode == 2 and "ORG/NAME" in proc.stderr
    readme = tmp_path / "README.md"
    readme.write_text("# ReVIOSa\n")
    with pytest.raises(deploy.DeployError, match="front matter"):
        deploy.check_space_card(readme)
    readme.write_text("---\ntitle: x\nsdk: gradio\n---\n# ReVIOSa\n")
    with pytest.raises(deploy.DeployError, match="app_file: app.py"):
        deploy.check_space_card(readme)
    deploy.check_space_card(ROOT / "README.md")


def test_model_repo_files_load_by_hub_id_from_the_hub_cache(tmp_path):
    """Lay the model repo's files out as huggingface_hub caches a download; offline, the hub id loads
    the same weights as the built-in copy."""
    proc = run_deploy(tmp_path, "--model-repo", "someone/reviosa-builtin", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    files = listed(proc.stdout)
    assert files == {
        "config.json": False, "model.safetensors": True, "tokenizer.json": False,
        "tokenizer_config.json": False, "README.md": False,
    }  # fmt: skip
    plan = deploy.model_plan("someone/reviosa-builtin")
    repo = tmp_path / "hub" / "models--someone--reviosa-builtin"
    commit = "0123456789abcdef0123456789abcdef01234567"
    deploy.stage(plan, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    card = (repo / "snapshots" / commit / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and 'from_pretrained("someone/reviosa-builtin")' in card
    code = """
import torch
from reviosa.hub import from_pretrained, resolve
print(resolve("someone/reviosa-builtin"))
a, b = from_pretrained("someone/reviosa-builtin"), from_pretrained("builtin")
sa, sb = a.state_dict(), b.state_dict()
assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
print("same", len(sa))
try:
    from_pretrained("someone/absent")
except FileNotFoundError as err:
    print("absent:", type(err).__name__, err)
"""
    env = {**offline_env(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[0] == str(repo / "snapshots" / commit) and "same" in out.stdout
    # Not in the cache, offline: a clear error that names the id.
    assert "absent: FileNotFoundError could not fetch 'someone/absent'" in out.stdout


def test_every_binary_file_in_the_repository_goes_through_lfs():
    """The Hub rejects a git push holding binaries outside LFS: each one must match .gitattributes."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if listing.returncode != 0:
        pytest.skip("not a git checkout")
    paths = [p for p in listing.stdout.split("\0") if p and (ROOT / p).is_file()]
    binaries = [p for p in paths if b"\0" in (ROOT / p).open("rb").read(8000)]
    assert "reviosa/builtin/model.safetensors" in binaries
    attrs = subprocess.run(
        ["git", "check-attr", "filter", "--stdin", "-z"],
        cwd=ROOT, input="\0".join([*binaries, "README.md"]) + "\0", capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    filters = dict(zip(attrs[0::3], attrs[2::3], strict=False))
    assert [p for p in binaries if filters[p] != "lfs"] == []
    assert filters["README.md"] == "unspecified"  # text stays text: diffs keep working
