"""unitok."""
