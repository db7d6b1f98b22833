"""Sales' HTTP API: thin routers over the handlers and the store."""
