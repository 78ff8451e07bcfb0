"""Migration analysis: what the SQL a revision executes does to existing tables and data.

Nothing here needs a database: statements are parsed with PostgreSQL's own parser (pglast).
"""
