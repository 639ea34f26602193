"""Label assignment: which predictions learn which object (issue 25: one module per rule)."""
