"""megadyt.training."""
