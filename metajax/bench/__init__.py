"""The benchmark suite: `python -m metajax.bench --suite paper`.

Each cell (implementation x algorithm x config) runs in a fresh subprocess so
that its peak memory is its own; results are JSON lines, a markdown table with
metajax / peer ratios from the same run, and plots.
"""
