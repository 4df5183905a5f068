"""Storage: the database tables, sessions, settings and the sealing of secrets at rest. Above the
domain, below activities and the API."""
