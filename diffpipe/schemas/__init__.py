"""diffpipe.schemas."""
