"""The gateway's pure rules: route policy, password policy, lockout. No I/O here."""
