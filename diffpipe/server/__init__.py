"""Running a Prefect server for a team: PostgreSQL, authentication, checks of what clients are pointed at."""
