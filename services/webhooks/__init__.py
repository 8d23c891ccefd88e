"""Webhooks service: turns registry events into signed HTTP deliveries, and fires `image.deployable`."""
