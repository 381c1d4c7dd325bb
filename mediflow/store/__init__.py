"""The study store: every analysis, its radiologist reviews and an audit trail, in SQLite or PostgreSQL.

`db` opens a database from a URL and applies the Alembic migrations shipped in `migrations/`;
`models` is the schema; `repository` holds the queries the API and the CLI use.
"""
