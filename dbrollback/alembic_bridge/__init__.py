"""The only package that knows Alembic internals."""
