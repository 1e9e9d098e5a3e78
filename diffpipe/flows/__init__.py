"""diffpipe.flows."""
