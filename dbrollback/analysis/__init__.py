"""Migration analysis: what the SQL a revision executes does to existing tables and data.

* :mod:`.classify` parses statements with PostgreSQL's own parser (pglast); no database needed;
* :mod:`.scratch` makes a throwaway schema-only copy of the target database;
* :mod:`.migration_sql` runs the pending revisions on that copy and records every statement
  (falling back to Alembic's offline ``--sql`` rendering where the copy cannot be used);
* :mod:`.plan` turns that into per-revision table uses and the snapshots ``upgrade`` will take.
"""
