"""The console: the registry's web UI at /console/, server-rendered from the same services the API uses."""
