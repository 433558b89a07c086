"""Promotion: the policy gate, signed approvals, aliases and rollback."""
