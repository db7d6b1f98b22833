"""HTTP API of the leads service: thin routers over the use cases in ``leads.handlers``."""
