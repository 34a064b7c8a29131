"""The papers' experiments as commands: each study trains (or reuses) its runs and writes results.md,
results.json and results.png into its own folder."""
