"""Metrics: generic distribution distances and each domain's own."""
