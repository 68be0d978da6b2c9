"""Print the measured errors of our import of "InternVL2.5 + Meta SAM2 from parts" against its goldens.

    .venv/bin/python scripts/parity/measure_parts.py

The same comparisons ``tests/test_parity_parts.py`` asserts, with the numbers shown
(docs/checkpoints.md "Parity with the references" quotes them).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_parity_parts as parts  # noqa: E402


def main() -> None:
    mllm, sam = parts._load("mllm"), parts._load("sam2")
    model = parts.model.__wrapped__(sam)
    print(f"parts ({mllm[1]['reference']} + {sam[1]['reference']})")
    print(
        f"  token ids of {len(mllm[1]['questions'])} chat prompts equal: {parts.prompt_ids_equal(model, *mllm)}"
    )
    for key, value in {**parts.mllm_errors(model, *mllm), **parts.sam_errors(model, *sam)}.items():
        print(f"  {key}: {value:.3g}")


if __name__ == "__main__":
    main()
