"""``python -m reviosa COMMAND`` (or ``reviosa COMMAND`` once installed): predict, synth, evaluate, convert,
export.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Those modules import nothing heavy at top level, so ``--help`` stays instant; the work imports
torch and friends inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "predict": "Segment actor and target in a video (or every expression of a dataset).",
    "synth": "Generate a split of the synthetic interaction world in the InterRVOS layout.",
    "evaluate": "Score a results JSON against a dataset (J, F, J&F for Actor, Target, RVOS).",
    "convert": "Convert an InternVL2.5 (+ SAM2 .pt), Sa2VA or reference ReVIOSa checkpoint into a ReVIOSa folder.",
    "export": "Segment a clip, correct it with clicks, and write it as annotation input and an InterRVOS sample.",
}


def build_parser() -> argparse.ArgumentParser:
    # `python -m reviosa` runs __main__.py; the installed `reviosa` console command runs main() directly.
    prog = "python -m reviosa" if sys.argv[0].endswith("__main__.py") else "reviosa"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"reviosa.cli.{name}")
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    module = importlib.import_module(f"reviosa.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        # torch is deliberately not a declared dependency (pip would pick a multi-GB CUDA build).
        print(
            "error: PyTorch is not installed. Install the build for your machine first, e.g. "
            "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu (README, Install details)",
            file=sys.stderr,
        )
        return 2
    except (ValueError, FileNotFoundError, OSError) as err:
        # User-facing failures (bad video, bad path, bad checkpoint) end with one clear line, no trace.
        print(f"error: {err}", file=sys.stderr)
        return 2
