"""HTTP edges of the gateway: auth, users, forwarding, docs."""
