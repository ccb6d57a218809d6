"""megadyt.cli."""
