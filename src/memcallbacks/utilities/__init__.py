"""Shared plumbing: atomic files, rank collectives, Lightning internals, argument validation."""
