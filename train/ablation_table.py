"""Print the ablation table (markdown) from the scores ``scripts/ablation.sh`` writes.

python -m train.ablation_table RUNS_DIR  (reads RUNS_DIR/{variant}.json, written by ``evaluate``)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# (file stem, [SEG_ACT]+[SEG_TAR], AML), in the paper's Table 4 order
VARIANTS = (
    ("single_seg", False, False),
    ("single_seg_aml", False, True),
    ("two_tokens", True, False),
    ("two_tokens_aml", True, True),
)


def table(runs: Path) -> str:
    """Markdown rows: variant, switches, Actor / Target / RVOS J&F (a single [SEG] has no target)."""
    lines = [
        "| | [SEG_ACT] [SEG_TAR] | AML | Actor J&F | Target J&F | RVOS J&F |",
        "|---|---|---|---|---|---|",
    ]
    for i, (stem, two, aml) in enumerate(VARIANTS, 1):
        path = runs / f"{stem}.json"
        if not path.is_file():
            lines.append(f"| ({_roman(i)}) {stem} | | | not run | | |")
            continue
        s = json.loads(path.read_text())
        target = f"{s['target']['JF']:.1f}" if two else "-"
        lines.append(
            f"| ({_roman(i)}) {stem} | {'yes' if two else 'no'} | {'yes' if aml else 'no'} "
            f"| {s['actor']['JF']:.1f} | {target} | {s['rvos']['JF']:.1f} |"
        )
    return "\n".join(lines)


def _roman(i: int) -> str:
    return ("i", "ii", "iii", "iv")[i - 1]


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
