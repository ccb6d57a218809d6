"""megadyt.data."""
