"""Persistence: SQLAlchemy models and queries, migrations, the content-addressed blob store."""
