"""rename customers.first_name to given_name, without downtime (expand/contract)

A plain ``op.alter_column(..., new_column_name=...)`` would break every
application server still running the previous release (its queries name
first_name) for as long as the deploy takes, and rolling it back would lose
nothing only if no one wrote in between.  ``expand.rename_column`` instead
EXPANDS: it adds given_name beside first_name and a dual-write trigger that
keeps the two equal whichever one a write sets.  Existing rows are copied by
``dbrollback upgrade`` in short batches after this revision commits.

Deploy sequence:

1. ``dbrollback upgrade``: this revision (brief lock, no rewrite), then the
   batched backfill of given_name.  Old code keeps reading and writing
   first_name.
2. Deploy the code that uses given_name.  Old and new code run side by side;
   the trigger keeps both columns equal.
3. Once no code uses first_name: ``dbrollback contract 0010_rename_first_name``
   checks every row is in sync, snapshots the table and drops first_name
   (given_name becomes NOT NULL if first_name was).

To back out before the contract: ``dbrollback abort 0010_rename_first_name``
(or ``dbrollback rollback``, or this downgrade) drops given_name and the
trigger; first_name holds every write made meanwhile.  Not lossy either way.
See docs/expand-contract.md.

Revision ID: 0010_rename_first_name
Revises: 0009_drop_newsletter
Create Date: 2024-01-10 00:00:00

"""

from collections.abc import Sequence

from dbrollback import expand

# revision identifiers, used by Alembic.
revision: str = "0010_rename_first_name"
down_revision: str | Sequence[str] | None = "0009_drop_newsletter"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    expand.rename_column("customers", "first_name", "given_name")


def downgrade() -> None:
    """Downgrade schema."""
    expand.abort()
