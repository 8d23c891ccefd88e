"""Identity and access: scopes, roles and grants (pure), API keys, tokens, rate limits, audit, and their store."""
