"""The `dbrollback` schema inside the target database: journal, audit and their invariants."""

SCHEMA = "dbrollback"
OBJECT_PREFIX = "_dbrb_"  # triggers, functions and staging tables dbrollback creates
