"""`dbrollback check`: every revision up, down and up again on a throwaway PostgreSQL with generated
rows, reporting whether the schema and the data come back (see docs/check.md)."""
