"""diffpipe.storage."""
