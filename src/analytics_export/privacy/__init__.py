"""Privacy inside every export: the rules (`rules`), the policy an export enforces (`policy`) and the
redaction of values inside properties (`redaction`)."""
