"""Rehearsal of the real stack offline: its configs, and seeded random-weight checkpoints built from them."""
