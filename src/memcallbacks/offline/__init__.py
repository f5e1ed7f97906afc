"""Offline analyses over finished runs: attacks across shadow runs, counterfactual memorisation."""
