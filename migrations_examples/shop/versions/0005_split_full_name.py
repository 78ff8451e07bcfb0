"""split customers.full_name into first_name and last_name

Adds first_name/last_name, fills them by splitting full_name on the FIRST
space (first_name = text before it, last_name = everything after it, so middle
names end up in last_name), then drops full_name.

A name without any space goes entirely into first_name and last_name is set
to NULL (not '').  With that choice the downgrade's
``concat_ws(' ', first_name, last_name)`` rebuilds every full_name exactly
(concat_ws skips NULLs), so this step does not lose information by itself;
only edits made to first_name/last_name after the upgrade (e.g. a NULL
first_name) can make the round trip differ.

Revision ID: 0005_split_full_name
Revises: 0004_normalise_emails
Create Date: 2024-01-05 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005_split_full_name"
down_revision: str | Sequence[str] | None = "0004_normalise_emails"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("customers", sa.Column("first_name", sa.Text, nullable=True))
    op.add_column("customers", sa.Column("last_name", sa.Text, nullable=True))
    op.execute(
        """
        UPDATE customers SET
            first_name = CASE
                WHEN strpos(full_name, ' ') > 0
                THEN left(full_name, strpos(full_name, ' ') - 1)
                ELSE full_name
            END,
            last_name = CASE
                WHEN strpos(full_name, ' ') > 0
                THEN substr(full_name, strpos(full_name, ' ') + 1)
                ELSE NULL
            END
        """
    )
    op.drop_column("customers", "full_name")


def downgrade() -> None:
    """Downgrade schema."""
    op.add_column("customers", sa.Column("full_name", sa.Text, nullable=True))
    op.execute("UPDATE customers SET full_name = concat_ws(' ', first_name, last_name)")
    op.alter_column("customers", "full_name", existing_type=sa.Text, nullable=False)
    op.drop_column("customers", "last_name")
    op.drop_column("customers", "first_name")
