"""Training: engine, recipes, checkpoints, distributed, metrics and plots."""
