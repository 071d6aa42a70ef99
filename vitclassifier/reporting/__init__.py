"""The reporting layer."""
