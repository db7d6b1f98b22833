"""One module per owning department; each class is one version of one event."""
