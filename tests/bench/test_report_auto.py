"""The report's automatic-dispatch table: the picked backend against the best plain-PyTorch contestant."""

from __future__ import annotations

from lsvit.bench.report import auto_dispatch_rows, auto_dispatch_table


def _record(name: str, ms: float, status: str = "ok") -> dict:
    return {"contestant": name, "status": status, "median_ms": ms}


def _results() -> dict:
    return {
        "cases": [
            {
                "case": {"label": "A"},
                "auto_backend": "cpu",
                "results": [
                    _record("conv", 30.0),
                    _record("linear", 20.0),
                    _record("compile", 5.0, status="failed"),  # not ok: never the best plain
                    _record("gemm floor", 15.0),
                    _record("ours:cpu", 16.0),
                    _record("ours:reference", 12.0),  # faster, but not what dispatch picks
                ],
            },
            {
                "case": {"label": "B"},
                "auto_backend": "reference",
                "results": [_record("linear", 10.0), _record("ours:reference", 12.5), _record("gemm floor", 9.0)],
            },
        ]
    }


def test_rows_compare_the_picked_backend_with_the_best_plain_contestant():
    a, b = auto_dispatch_rows(_results())
    assert (a["auto"], a["auto_ms"], a["best_plain"], a["best_plain_ms"], a["floor_ms"]) == (
        "cpu",
        16.0,
        "linear",
        20.0,
        15.0,
    )
    assert a["speedup"] == 20.0 / 16.0
    assert (b["auto"], b["best_plain"], b["speedup"]) == ("reference", "linear", 10.0 / 12.5)


def test_table_names_the_backend_and_summarizes_median_and_worst():
    lines = auto_dispatch_table(_results())
    assert lines[2] == "| A | cpu | 16.00 | linear | 20.00 | 15.00 | 1.07x | 1.25x |"
    assert lines[3] == "| B | reference | 12.50 | linear | 10.00 | 9.00 | 1.39x | 0.80x |"
    assert lines[-1].endswith("median 1.02x, worst 0.80x, over 2 cases.")


def test_no_table_for_results_without_the_pick():
    results = _results()
    for entry in results["cases"]:
        del entry["auto_backend"]
    assert auto_dispatch_table(results) == []


def test_table_names_the_cpu_gemm_engine_when_recorded():
    results = _results()
    results["cases"][0]["auto_engine"] = "bf16kernel"
    lines = auto_dispatch_table(results)
    assert lines[2].startswith("| A | cpu (bf16kernel GEMM) | 16.00 |")
    assert lines[3].startswith("| B | reference | 12.50 |")
