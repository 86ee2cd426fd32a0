"""Access control: API keys as bearer tokens, scopes per route, stream tickets, per-key limits."""
