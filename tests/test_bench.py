"""Smoke tests of bench/: every benchmark runs end to end at a tiny size and reports its figures.

No timing is asserted (the figures come from the benchmarks themselves, run by hand on a quiet
machine); what is asserted is that each one measures what it says, on real components.
"""

from __future__ import annotations

import pytest


def test_bench_viz_compares_ours_with_bare_ffmpeg():
    pytest.importorskip("imageio_ffmpeg", reason="the reference encoder comes with requirements.txt")
    from bench import bench_viz

    report = bench_viz.main(["--frames", "6", "--size", "64x48", "--repeat", "1", "--load", "1"])
    assert set(report) == {0, 1}
    for figures in report.values():
        assert figures["ratio"] > 0 and figures["ours"] > 0 and figures["reference"] > 0
        assert figures["pyav_ratio"] > 0 and figures["ours, PyAV"] > 0


def test_bench_evaluate_matches_davis_on_both_kinds_of_masks():
    pytest.importorskip("cv2", reason="the DAVIS code's cv2.dilate comes with requirements-dev.txt")
    from bench import bench_evaluate

    report = bench_evaluate.main(["--videos", "1", "--frames", "2", "--strays", "30", "--repeat", "1"])
    assert set(report) == {"compact", "scattered"}
    for figures in report.values():
        # 4 expressions: RVOS on each, plus Target on the unidirectional one (Actor shares RVOS's ids).
        assert figures["frames"] == 2 * 5
        assert figures["max_difference"] == 0.0
        assert figures["in_process"] > 0 and figures["end_to_end"] > 0 and figures["cli"] > 0


def test_bench_train_aml_runs_both_steps():
    from bench import bench_train_aml

    report = bench_train_aml.main(["--geometry", "tiny", "--reps", "1", "--rank", "4", "--threads", "1"])
    assert report["supervised"] == [1, [0, 1]]
    for mode in ("plain", "aml"):
        assert len(report[mode]["s"]) == 1 and report[mode]["mib"][0] >= 0
    assert report["ratios"]["time"] > 0


def test_bench_e2e_times_every_stage_on_cpu(tmp_path):
    from bench import bench_e2e

    report = bench_e2e.main(
        [
            "--geometry",
            "tiny",
            "--seconds",
            "0.25",
            "--size",
            "96x64",
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "e2e.json"),
        ]
    )
    assert report["device"] == "cpu" and report["frames"] == 6
    assert set(report["stages"]) == {"decode", "MLLM", "SAM2 encode", "propagation", "render"}
    assert all(seconds > 0 for seconds in report["stages"].values()), report["stages"]
    assert report["tracked_roles"] == 2  # the forced answer names both roles
    assert (tmp_path / "e2e.json").is_file()
