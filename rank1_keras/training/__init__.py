"""Training machinery the binaries share: strategies, the custom loop, checkpoints, schedules, evaluation."""
