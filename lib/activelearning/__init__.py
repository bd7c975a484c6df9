"""activelearning."""
