"""Templates: recipes built into read-only layers that sandboxes start from."""
