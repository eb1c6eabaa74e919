"""The lsvit benchmark suite: patch counts and latency of every backend against what users run today.

``lsvit-bench`` (or ``python -m lsvit.bench.suite``) runs it; ``python -m lsvit.bench.report results.json`` renders
the Markdown from the JSON; ``python -m lsvit.bench.gpu_validate`` is the one-command first GPU run.
See docs/benchmarks.md.
"""
