"""megadyt.evaluation."""
