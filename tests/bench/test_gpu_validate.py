"""gpu_validate without a GPU: it refuses clearly, and its headline report renders from suite results."""

from __future__ import annotations

import pytest
import torch

from lsvit.bench import gpu_validate, suite


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
    assert "## Headline: bf16" in markdown and rows[0]["case"] in markdown and "## Benchmark suite" in markdown


def test_sweep_section_renders_measured_against_modeled():
    """The report's Triton section: one row per config, measured / modeled ratio, failures kept visible."""
    sweep = {
        "rows": [
            {"kernel": "forward", "video": "bf16", "config": "128x128x64 w8 s3 g8", "us": 200.0, "estimate_us": 160.0,
             "floor_us": 150.0, "picked": True, "error": None},
            {"kernel": "forward", "video": "bf16", "config": "128x256x64 w8 s3 g8", "us": None, "estimate_us": None,
             "floor_us": None, "picked": False, "error": "out of resources"},
        ]
    }  # fmt: skip
    text = "\n".join(gpu_validate.render_sweep(sweep))
    assert "measured vs modeled" in text and "| 200.0 | 160.000 | 150.000 | 1.250x | yes |" in text
    assert "failed: out of resources" in text
    assert "## Triton configs" in gpu_validate.render({"sweep": sweep})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_sweep_without_a_gpu_reports_instead_of_crashing():
    result = gpu_validate.run_triton_sweep()
    assert result.get("error") and not result.get("rows")
