"""Scripts that measure orchestrate and print JSON lines; run each from the repository root as
`python -m benchmarks.NAME` (the latest figures are in benchmarks/RESULTS.md)."""
