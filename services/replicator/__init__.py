"""replicator package."""
