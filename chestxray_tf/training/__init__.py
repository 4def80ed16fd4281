"""Training: strategy choice, optimiser and schedule, the custom loop, checkpoints, logs."""
