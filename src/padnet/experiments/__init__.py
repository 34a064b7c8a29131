"""The experiments tier: the papers' comparisons and studies, the analyses behind them, reports and the
benchmarks of `padnet bench`. Builds on the core package and the training tier."""
