"""The inference layer."""
