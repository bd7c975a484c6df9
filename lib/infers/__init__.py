"""infers."""
