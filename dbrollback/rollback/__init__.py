"""`dbrollback rollback`: undo an upgrade run, merging back the data its revisions destroyed.

plan.py chooses the run and refuses what cannot be rolled back safely; merge.py is the per-table
three-way merge (pre-image snapshot, post-image fingerprint, live table) in SQL; verify.py proves
the outcome; execute.py drives it all inside ONE transaction through the Alembic runner.
"""
