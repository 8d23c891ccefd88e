"""gc package."""
