"""diffpipe.tasks."""
