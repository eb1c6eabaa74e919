"""End-to-end smoke test of the benchmark suite in --quick mode: Markdown, JSON and PNGs, failure detection."""

from __future__ import annotations

import json

import pytest
import torch

import lsvit_kernels as lk
from lsvit.bench import report, suite
from lsvit.bench.contestants import CaseInputs, Contestant, Prepared, make_ours


def _wrong_tokens(inputs: CaseInputs) -> Prepared:
    """The patch tokens without the positional embedding: a plausible bug, small but far outside tolerance."""
    ours = make_ours("reference").prepare(inputs)
    pos = inputs.pos

    def result(i: int):
        out = ours.result(i)
        out["tokens"] = out["tokens"] - pos.to(out["tokens"].dtype)  # drop the pos add
        return out

    return Prepared(step=ours.step, result=result)


def _wrong_grad(inputs: CaseInputs) -> Prepared:
    """Right tokens, weight gradient off by a factor 2 (only visible in forward + backward)."""
    ours = make_ours("reference").prepare(inputs)

    def result(i: int):
        out = ours.result(i)
        if "grad_weight" in out:
            out["grad_weight"] = out["grad_weight"] * 2
        return out

    return Prepared(step=ours.step, result=result)


def _raises(inputs: CaseInputs) -> Prepared:
    raise RuntimeError("kernel launch failed")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_out")
    args = suite.build_parser().parse_args(["--quick", "--out", str(out), "--no-progress"])
    extra = [
        Contestant("wrong tokens", "ours", "drops the pos add", _wrong_tokens),
        Contestant("wrong grad", "ours", "doubles grad_weight", _wrong_grad),
        Contestant("raises", "ours", "raises at setup", _raises),
    ]
    results = suite.run_suite(args, extra_contestants=extra)
    markdown = suite.write_outputs(results, out)
    return out, results, markdown


def _records(results, name):
    return [(entry["case"], r) for entry in results["cases"] for r in entry["results"] if r["contestant"] == name]


def test_outputs_written(quick_run):
    out, results, markdown = quick_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["machine"]["torch"] == torch.__version__
    assert len(on_disk["cases"]) == len(results["cases"]) >= 3
    for name in ("latency_fwd.png", "latency_fwdbwd.png", "speedup.png", "memory.png", "patch_counts.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert markdown.startswith("# lsvit benchmark")
    assert "| case | conv ms | linear ms |" in markdown
    assert (out / "results.md").read_text() == markdown
    # the report CLI renders the same Markdown from the JSON alone
    assert report.render_markdown(on_disk) == markdown


def test_baselines_and_ours_are_checked_and_timed(quick_run):
    _, results, _ = quick_run
    for name in ["conv", "linear", "gemm floor"] + [f"ours:{b}" for b in results["backends"]]:
        for case, record in _records(results, name):
            assert record["status"] == "ok", (name, case["label"], record.get("reason"))
            assert max(record["errors"].values()) <= record["tolerance"]
            assert len(record["samples_ms"]) == record["n"] >= 2
            assert record["min_ms"] <= record["median_ms"] <= record["max_ms"]
            assert record["peak_bytes"] >= 0 and record["gflops"] > 0
    compiled = _records(results, "compile")
    assert compiled and all(r["status"] == "skipped" and "--quick" in r["reason"] for _, r in compiled)
    fwdbwd = [e for e in results["cases"] if e["case"]["mode"] == "fwdbwd"]
    assert fwdbwd and "grad_weight" in fwdbwd[0]["results"][0]["errors"]


def test_each_case_names_the_automatically_dispatched_backend(quick_run):
    _, results, markdown = quick_run
    expected = lk.available_backends("cpu")[0]  # the first available in the registry's automatic order
    assert [entry["auto_backend"] for entry in results["cases"]] == [expected] * len(results["cases"])
    assert "### Automatic dispatch" in markdown and f"| {expected} |" in markdown


def test_wrong_contestants_are_failed_and_not_timed(quick_run):
    _, results, markdown = quick_run
    for case, record in _records(results, "wrong tokens"):
        assert record["status"] == "failed", case["label"]
        assert "tokens error" in record["reason"]
        assert record["samples_ms"] == [] and "median_ms" not in record
    for case, record in _records(results, "wrong grad"):
        if case["mode"] == "fwdbwd":
            assert record["status"] == "failed" and "grad_weight" in record["reason"]
            assert record["samples_ms"] == []
        else:
            assert record["status"] == "ok"
    for _, record in _records(results, "raises"):
        assert record["status"] == "failed" and "kernel launch failed" in record["reason"]
    assert "**wrong tokens** FAILED" in markdown
    for entry in results["cases"]:
        assert "wrong tokens" not in entry["speedups"]


def test_patch_counts_and_model_section(quick_run):
    _, results, markdown = quick_run
    rows = {(r["size"], r["frames"], r["tubelet"]): r for r in results["patch_counts"]}
    assert rows[(224, 16, 1)]["tokens_per_clip"] == 3136
    assert rows[(224, 16, 2)]["tokens_per_clip"] == 1568
    assert rows[(224, 16, 4)]["tokens_per_clip"] == 784
    assert rows[(224, 16, 2)]["attn_pairs_per_step_sum"] == 8 * 197**2
    assert rows[(224, 16, 2)]["attn_pairs_full_clip"] == (1 + 1568) ** 2
    model = results["model"]
    assert all(v["status"] == "ok" for v in model["variants"]), model
    assert "LSViTForAction forward" in markdown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--quick", "--mode", "fwd,sideways"], "--mode 'sideways' is unknown; use fwd and/or fwdbwd"),
        (["--quick", "--input", "float,int4"], "--input ['int4'] is unknown; use float and/or uint8"),
        (["--quick", "--contestants", "nope"], "--contestants ['nope'] not known here"),
    ],
)
def test_bad_arguments_print_one_line_and_exit_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        suite.main([*argv, "--out", str(tmp_path), "--no-plots"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err and "Traceback" not in err


def test_input_stage_section(quick_run):
    """Unfused and fused input stage, forward and training step, each timed (eager in --quick) and reported."""
    _, results, markdown = quick_run
    rows = results["input_stage"]["rows"]
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    items = {(r["variant"], r["item"], r["path"]) for r in rows}
    for variant in ("2D", "3D t=2"):
        for item in ("input stage", "input stage uint8", "forward", "train step"):
            assert {(variant, item, "unfused"), (variant, item, "fused")} <= items
    assert "## LSViT input stage" in markdown
