"""Webhooks shared by the management API (which writes them) and the webhooks service (which delivers them)."""
