"""HTTP routers and their request/response models: thin, the rules live in domain/."""
