"""The demo and its toy models."""
