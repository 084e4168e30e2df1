"""Engine: distributed setup, optimizer and schedule, EMA, checkpoints, training and evaluation loops."""
