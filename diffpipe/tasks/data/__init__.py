"""diffpipe.tasks.data."""
