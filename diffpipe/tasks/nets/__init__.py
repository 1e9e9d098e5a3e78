"""diffpipe.tasks.nets."""
