"""Put the studio on the Hugging Face Hub as a Space, or a model as a model repo, in one command.

    python -m studio.deploy --space ORG/NAME [--private] [--dry-run]
    python -m studio.deploy --model-repo ORG/NAME [--model builtin|DIR] [--dry-run]

Uploads go through ``HfApi.upload_folder``, which stores binary files (weights, example videos)
through LFS / Xet as the Hub requires. The Space gets only what it runs: ``app.py``, the first-party
packages that ``app.py`` imports (found by reading the imports, transitively), the examples, the
requirements files, the README (whose front matter configures the Space), the licence and
``.gitattributes``; never tests, runs, results, docs, bench or training code. Each deploy mirrors
that list: files left on the Hub from an earlier deploy and no longer in it are deleted.
``--dry-run`` lists the files and sizes and touches no network. The token is ``HF_TOKEN`` or the
one saved by ``hf auth login``.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
APP_FILE = "app.py"
# Beside the code: the Space's card and configuration, what the app reads at run time
# (requirements-sam2.txt: studio.bootstrap installs sam2 from it), and the example clips.
SPACE_FILES = ("README.md", "LICENSE", "requirements.txt", "requirements-sam2.txt", ".gitattributes")
SPACE_FOLDERS = ("examples",)
SKIPPED_PARTS = {"__pycache__", ".ipynb_checkpoints"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}
# What a model repo holds: what `reviosa.hub.from_pretrained` downloads by hub id.
MODEL_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Public Spaces: visitors cannot make the server download arbitrary models (docs/app.md, Limits).
SPACE_VARIABLES = {"REVIOSA_ALLOW_MODEL_CHOICE": "no"}


class DeployError(ValueError):
    """A deploy that cannot go ahead; the message says what to change."""


@dataclass(frozen=True)
class Upload:
    """One file of a deploy: where it goes in the repo, and what it is made of."""

    path_in_repo: str
    source: Path | None = None  # a file on disk, or
    content: bytes | None = None  # generated (the model card)

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.source.stat().st_size

    @property
    def binary(self) -> bool:
        """Git's test (a NUL byte in the first 8000 bytes): these go through LFS / Xet."""
        head = self.content[:8000] if self.content is not None else self.source.open("rb").read(8000)
        return b"\0" in head


@dataclass(frozen=True)
class Plan:
    """A deploy: the repo, its type, the files, and the Space variables to set."""

    repo_id: str
    repo_type: str  # "space" | "model"
    files: tuple[Upload, ...]
    variables: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        """The dry run's listing: one line per file (size, LFS/Xet or not, path), then the totals."""
        width = max(len(_size(f.size)) for f in self.files)
        lines = [f"{self.repo_type} {self.repo_id}: {len(self.files)} files, {_size(self.total)}"]
        for f in self.files:
            lines.append(
                f"  {_size(f.size):>{width}}  {'LFS/Xet' if f.binary else '       '}  {f.path_in_repo}"
            )
        lines += [f"  variable {k}={v}" for k, v in self.variables]
        return "\n".join(lines)

    @property
    def total(self) -> int:
        return sum(f.size for f in self.files)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1024 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------------- Space


def first_party(root: Path = ROOT) -> set[str]:
    """The repository's top-level packages (folders with an ``__init__.py``)."""
    return {p.parent.name for p in root.glob("*/__init__.py")}


def imported_top_levels(source: str, filename: str) -> set[str]:
    """Top-level names of every absolute import in ``source``, at any depth (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _package_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not SKIPPED_PARTS & set(p.parts) and p.suffix not in SKIPPED_SUFFIXES
    )


def space_packages(root: Path = ROOT, app_file: str = APP_FILE) -> list[str]:
    """The first-party packages ``app_file`` needs: its imports, then theirs, until none is new."""
    ours = first_party(root)
    needed: set[str] = set()
    queue = [root / app_file]
    while queue:
        path = queue.pop()
        for name in imported_top_levels(path.read_text(), str(path)) & ours - needed:
            needed.add(name)
            queue += [p for p in _package_files(root / name) if p.suffix == ".py"]
    return sorted(needed)


def check_space_card(readme: Path) -> None:
    """The README's front matter is the Space's configuration: refuse one the Hub would not run."""
    text = readme.read_text() if readme.is_file() else ""
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    if not match:
        raise DeployError(
            f"{readme.name} has no front matter: a Space needs one (copy docs/space_frontmatter.md to its top)"
        )
    for key, value in (("sdk", "gradio"), ("app_file", APP_FILE)):
        if not re.search(rf"^{key}:\s*{re.escape(value)}\s*$", match.group(1), re.MULTILINE):
            raise DeployError(
                f"{readme.name}'s front matter lacks `{key}: {value}` (see docs/space_frontmatter.md)"
            )


def space_plan(repo_id: str, root: Path = ROOT, allow_model_choice: bool = False) -> Plan:
    """Everything the Space runs, and nothing else."""
    check_space_card(root / "README.md")
    paths = [root / APP_FILE, *(root / name for name in SPACE_FILES)]
    for folder in (*space_packages(root), *SPACE_FOLDERS):
        paths += _package_files(root / folder)
    absent = [str(p.relative_to(root)) for p in paths if not p.is_file()]
    if absent:
        raise DeployError(f"missing from {root}: {absent} (deploy from a full checkout)")
    files = tuple(Upload(p.relative_to(root).as_posix(), source=p) for p in sorted(set(paths)))
    variables = () if allow_model_choice else tuple(SPACE_VARIABLES.items())
    return Plan(_checked_id(repo_id), "space", files, variables)


# ------------------------------------------------------------------------------------------- model


def model_card(config: dict, repo_id: str) -> str:
    name = config.get("name", repo_id.split("/")[1])
    return f"""---
license: mit
library_name: reviosa
tags:
  - video-object-segmentation
  - referring-segmentation
  - sam2
  - internvl
---

# {name}

A ReVIOSa model (interaction-aware referring video object segmentation: an actor mask track and,
for interactions, a target mask track) in the ReVIOSa Studio layout: `config.json`,
`model.safetensors`, tokenizer files.

```python
from reviosa.hub import from_pretrained
model = from_pretrained("{repo_id}")
```

```bash
reviosa predict clip.mp4 "person walking a dog" --model {repo_id} --out masks/
python app.py --model {repo_id}
```
"""


def model_plan(repo_id: str, model: str = "builtin") -> Plan:
    """The model folder's files that `from_pretrained` downloads, and a model card."""
    from reviosa.hub import resolve

    repo_id = _checked_id(repo_id)
    folder = resolve(model) if model == "builtin" or Path(model).exists() else None
    if folder is None:
        raise DeployError(f"no model folder {model!r}: pass 'builtin' or a folder made by save_pretrained")
    sources = sorted({p for pattern in MODEL_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    names = {p.name for p in sources}
    for required in ("config.json", "model.safetensors"):
        if required not in names:
            raise DeployError(f"{folder} has no {required}: not a ReVIOSa model folder")
    config = json.loads((folder / "config.json").read_text())
    card = Upload("README.md", content=model_card(config, repo_id).encode())
    return Plan(repo_id, "model", (*(Upload(p.name, source=p) for p in sources), card))


def _checked_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id or ""):
        raise DeployError(f"{repo_id!r} is not a hub id: give ORG/NAME (your user name or an organisation)")
    return repo_id


# ------------------------------------------------------------------------------------------ upload


def stage(plan: Plan, folder: Path) -> Path:
    """Lay the plan's files out in ``folder``, as they will be in the repo."""
    for f in plan.files:
        target = folder / f.path_in_repo
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.content is not None:
            target.write_bytes(f.content)
        else:
            shutil.copy2(f.source, target)
    return folder


def token_or_fail() -> str:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise DeployError(
            "no Hugging Face token: set HF_TOKEN, or run `hf auth login` (a token with write access)"
        )
    return token


def upload(plan: Plan, token: str, private: bool = False, message: str | None = None) -> str:
    """Create the repo if needed and make its files the plan's (one commit). Returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(
            plan.repo_id,
            repo_type=plan.repo_type,
            private=private,
            exist_ok=True,
            **({"space_sdk": "gradio"} if plan.repo_type == "space" else {}),
        )
        with tempfile.TemporaryDirectory(prefix="reviosa-deploy-") as tmp:
            api.upload_folder(
                repo_id=plan.repo_id,
                repo_type=plan.repo_type,
                folder_path=stage(plan, Path(tmp)),
                delete_patterns="*",  # mirror: what an earlier deploy left and this one lacks goes
                commit_message=message or f"Deploy ReVIOSa Studio ({len(plan.files)} files)",
            )
        for key, value in plan.variables:
            api.add_space_variable(plan.repo_id, key, value)
    except Exception as err:  # the hub client raises many types (auth, 403, network, rate limits)
        raise DeployError(f"the Hub refused or could not be reached ({type(err).__name__}: {err})") from err
    return str(url)


# --------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m studio.deploy", description=__doc__.splitlines()[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--space", metavar="ORG/NAME", help="deploy the studio as a Gradio Space")
    target.add_argument("--model-repo", metavar="ORG/NAME", help="upload a model as a model repo")
    p.add_argument(
        "--model", default="builtin", help="with --model-repo: 'builtin' (default) or a model folder"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would go up (files, sizes); no network")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument(
        "--allow-model-choice",
        action="store_true",
        help="Space: let visitors load any model (default: REVIOSA_ALLOW_MODEL_CHOICE=no is set)",
    )
    p.add_argument("--message", help="commit message")
    return p.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        if args.space:
            plan = space_plan(args.space, allow_model_choice=args.allow_model_choice)
        else:
            plan = model_plan(args.model_repo, args.model)
        print(plan.describe())
        if args.dry_run:
            print("dry run: nothing uploaded")
            return 0
        url = upload(plan, token_or_fail(), private=args.private, message=args.message)
    except (DeployError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"uploaded to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
