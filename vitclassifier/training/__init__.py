"""The training layer."""
