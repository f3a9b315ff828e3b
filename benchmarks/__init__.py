"""`tempo-bench bench`: speed and memory measured side by side in one run (see BENCHMARKS.md)."""
