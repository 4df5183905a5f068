"""Deterministic Temporal workflow code: the machine lifecycle and cluster admission."""
