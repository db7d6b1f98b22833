"""The service desk's rules: pure, no I/O (no database, no broker, no HTTP)."""
