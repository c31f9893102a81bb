"""PostgreSQL: the job records the API reads, projected from the events (asyncpg)."""
