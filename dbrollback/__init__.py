"""dbrollback: safe, verifiable rollback for Alembic migrations on PostgreSQL."""

__version__ = "0.1.0"
