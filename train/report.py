"""The stages' report (nanochat-style): every stage writes its own section, one file each, under
``results/stages/``; ``python -m train.report`` assembles them, in stage order, into
``results/stages/report.md``.

A section is the stage's command, its wall time, what it wrote, and its gate: each figure beside
its threshold, measured on held-out data, met or missed. A stage run again replaces its section.

python -m train.report [--dir results/stages]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

REPORT_DIR = Path("results/stages")
REPORT = "report.md"
# Section files in pipeline order (train.stages.STAGES names them; stage 2's later phases,
# sam_pretrain runs from an earlier phase's weights, write their own sections).
STAGE2 = (
    "sam_pretrain",
    "sam_pretrain_objects",
    "sam_pretrain_world",
    "sam_pretrain_world_more",
    "sam_pretrain_soft",
    "sam_pretrain_attributes",
)
ORDER = ("vl_pretrain", *STAGE2, "sa2va", "reviosa", "ablation")
# Sections of runs the pipeline does not make (levers tried on the way): shown where present,
# never listed as not run.
OPTIONAL = ("sam_pretrain_soft",)


@dataclass(frozen=True)
class Gate:
    """One gate figure: ``value`` must reach ``threshold`` (both in the same unit)."""

    name: str
    value: float
    threshold: float

    @property
    def met(self) -> bool:
        return self.value >= self.threshold


def write_section(
    stage: str,
    title: str,
    command: str,
    wall_s: float,
    gates: list[Gate],
    figures: dict[str, float],
    notes: str = "",
    out: Path = REPORT_DIR,
) -> Path:
    """Write ``out/STAGE.md`` (the human section) and ``out/STAGE.json`` (the same, machine-read)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"## {title}", "", f"`{command}`", "", f"Wall time: {wall_s / 60:.1f} min.", ""]
    if gates:
        lines += ["| gate | measured | needed | |", "|---|---|---|---|"]
        lines += [
            f"| {g.name} | {g.value:.3f} | {g.threshold:.3f} | {'met' if g.met else 'missed'} |"
            for g in gates
        ]
        lines.append("")
    if figures:
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in figures.items()]
        lines.append("")
    if notes:
        lines += [notes.strip(), ""]
    path = out / f"{stage}.md"
    path.write_text("\n".join(lines))
    record = {
        "stage": stage, "title": title, "command": command, "wall_s": wall_s,
        "gates": [asdict(g) | {"met": g.met} for g in gates], "figures": figures,
    }  # fmt: skip
    (out / f"{stage}.json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def assemble(out: Path = REPORT_DIR) -> Path:
    """Concatenate the sections present, in pipeline order, into ``out/report.md``."""
    parts = ["# The built-in model's stages: report", ""]
    missing = []
    for stage in ORDER:
        section = out / f"{stage}.md"
        if section.is_file():
            parts.append(section.read_text())
        elif stage not in OPTIONAL:
            missing.append(stage)
    if missing:
        parts.append("Not run yet: " + ", ".join(missing) + ".\n")
    path = out / REPORT
    path.write_text("\n".join(parts))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=str(REPORT_DIR), help="folder of the stage sections")
    args = parser.parse_args(argv)
    print(f"wrote {assemble(Path(args.dir))}")


if __name__ == "__main__":
    main()
