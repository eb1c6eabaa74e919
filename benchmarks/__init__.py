"""The lsvit benchmark suite: patch counts and latency of every backend against what users run today.

``lsvit-bench`` (or ``python -m benchmarks.suite``) runs it; ``python -m benchmarks.report results.json`` renders
the Markdown from the JSON; ``python -m benchmarks.gpu_validate`` is the one-command first GPU run.
See docs/benchmarks.md.
"""
