"""Task distributions (benchmarks)."""
