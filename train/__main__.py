"""Command line: ``python -m train {fit, select-heads, export}``.

python -m train fit --config PRESET_OR_FILE [--set key=value ...] --out RUNDIR [--resume]
python -m train select-heads --model M --data DIR [--split S] [--samples N] [--top-k 4]
                             [--config PRESET_OR_FILE] --out DIR
python -m train export RUNDIR --out MODELDIR

Under ``torchrun --nproc_per_node N python -m train fit ...`` every process runs the same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("train")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description="Train ReVIOSa models.")
    sub = p.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train (or resume) a run")
    fit.add_argument("--config", help="preset (tiny, synth-cpu, paper-1b, paper-4b) or a JSON / YAML file")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    fit.add_argument("--out", required=True, help="run directory")
    fit.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")

    sel = sub.add_parser("select-heads", help="choose the AML layer and heads (paper Figure 6)")
    sel.add_argument("--model", required=True, help="model folder or name (reviosa.hub.from_pretrained)")
    sel.add_argument("--data", required=True, help="dataset in the InterRVOS / MeViS layout")
    sel.add_argument("--split", help="split folder inside --data")
    sel.add_argument("--samples", type=int, default=200, help="expressions measured")
    sel.add_argument("--top-k", type=int, default=4, help="heads supervised in the chosen layer")
    sel.add_argument("--config", default="paper-1b", help="training config to write the choice into")
    sel.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    sel.add_argument("--device", default="cpu")
    sel.add_argument("--out", required=True, help="output folder")

    exp = sub.add_parser("export", help="write a run's newest checkpoint as a model folder, LoRA merged")
    exp.add_argument("run", help="run directory")
    exp.add_argument("--out", required=True, help="model folder to write")
    exp.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
        help="storage type of the floating-point weights (float16 halves the download)",
    )  # fmt: skip
    return p


def _fit(args) -> int:
    from train.config import CONFIG_NAME, load_config
    from train.loop import Trainer

    saved = Path(args.out) / CONFIG_NAME
    if args.resume and saved.is_file():
        if args.config:
            logger.info("resuming: using %s, not --config %s", saved, args.config)
        config = load_config(str(saved), args.set)
    elif args.config:
        config = load_config(args.config, args.set)
    else:
        raise ValueError("fit needs --config (or --resume in a run directory)")
    if not args.resume and (Path(args.out) / "checkpoints").is_dir():
        raise FileExistsError(f"{args.out} already holds checkpoints: pass --resume, or choose another --out")
    Trainer(config, args.out, resume=args.resume).fit()
    return 0


def _select_heads(args) -> int:
    from reviosa.config import AttentionSupervision
    from reviosa.data import InterRVOSDataset
    from reviosa.hub import from_pretrained
    from train.config import load_config
    from train.select_heads import choose_samples, save_figures, select_heads

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = from_pretrained(args.model, device=args.device)
    dataset = InterRVOSDataset(args.data, split=args.split)
    selection = select_heads(model, choose_samples(dataset, args.samples), top_k=args.top_k)
    (out / "selection.json").write_text(json.dumps(selection.to_json(), indent=2) + "\n")
    config = load_config(args.config, args.set)
    config.attention = AttentionSupervision(layer=selection.layer, heads=tuple(selection.heads))
    config.save(out / "train_config.json")
    figures = save_figures(selection, out)
    print(f"layer {selection.layer}, heads {selection.heads} over {selection.samples} expressions")
    print(
        f"wrote {out / 'selection.json'}, {out / 'train_config.json'}, " + ", ".join(str(f) for f in figures)
    )
    return 0


def _export(args) -> int:
    import torch

    from train.loop import export_run

    path = export_run(args.run, args.out, dtype=getattr(torch, args.dtype))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
    )
    commands = {"fit": _fit, "select-heads": _select_heads, "export": _export}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
