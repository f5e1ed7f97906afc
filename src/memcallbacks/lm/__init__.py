"""Everything that runs a language model (no Lightning)."""
