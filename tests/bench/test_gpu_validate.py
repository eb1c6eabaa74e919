"""gpu_validate without a GPU: it refuses clearly, and its headline report renders from suite results."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_validate, suite


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_refuses_without_cuda(tmp_path, capsys):
    assert gpu_validate.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_headline_rows_and_markdown(tmp_path):
    args = suite.build_parser().parse_args(
        [
            "--device",
            "cpu",
            "--sizes",
            "32",
            "--frames",
            "4",
            "--tubelets",
            "2",
            "--embed-dim",
            "32",
            "--batch",
            "1",
            "--dtype",
            "bfloat16",
            "--mode",
            "fwd,fwdbwd",
            "--quick",
            "--no-model",
            "--no-memory",
            "--no-progress",
            "--contestants",
            "conv,linear,compile,gemm floor,ours:reference",
            "--out",
            str(tmp_path),
        ]
    )
    results = suite.run_suite(args)
    for entry in results["cases"]:
        entry["case"]["tags"] = ["headline"]  # stand in for the B=32 target, too big for a CPU test
    rows = gpu_validate.headline(results)
    assert [r["case"] for r in rows] == [e["case"]["label"] for e in results["cases"]]
    for row in rows:
        assert row["best_ours"] == "ours:reference" and row["best_ours_ms"] > 0
        assert row["speedup"]["conv"] == pytest.approx(row["medians_ms"]["conv"] / row["best_ours_ms"])
        assert row["status"]["compile"] == "skipped"
    markdown = gpu_validate.render({"headline": rows, "bench": results})
    assert "## Headline (issue 3)" in markdown and rows[0]["case"] in markdown and "## Benchmark suite" in markdown
