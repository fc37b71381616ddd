"""Training loops, checkpoints and progress reporting."""
