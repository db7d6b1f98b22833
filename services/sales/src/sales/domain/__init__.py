"""Sales' pure rules: pipeline and required fields, assignment, verdicts, forecast, access."""
