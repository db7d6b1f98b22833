"""Marketing's pure rules: scoring, duplicate merge, status transitions. No I/O here."""
