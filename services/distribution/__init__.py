"""distribution package."""
