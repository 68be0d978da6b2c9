"""Print the measured errors of our implementation against the recorded reference goldens.

    .venv/bin/python scripts/parity/measure.py [sa2va] [reviosa_ref] [a recorded folder]

The same comparisons ``tests/test_parity_sa2va.py`` / ``tests/test_parity_reviosa_ref.py`` assert,
with the numbers shown (docs/checkpoints.md "Parity with the references" quotes them).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from parity_reference import GoldenSet, check_token_ids, measure_mllm, measure_sam, run_sam  # noqa: E402


def main(names: list[str]) -> None:
    for name in names or ["sa2va", "reviosa_ref"]:
        golden = GoldenSet.load(name)
        model = golden.model()
        check_token_ids(golden, model)
        print(
            f"{name} ({golden.meta['reference']}): token ids of {len(golden.meta['prompts'])} prompts as expected"
        )
        errors = {**measure_mllm(golden, model), **measure_sam(golden, *run_sam(golden, model))}
        for key, value in errors.items():
            print(f"  {key}: {value:.3g}")


if __name__ == "__main__":
    main(sys.argv[1:])
