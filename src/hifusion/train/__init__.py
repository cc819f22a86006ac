"""Training: the Lightning module, losses, fitting strategies and checkpoints."""
