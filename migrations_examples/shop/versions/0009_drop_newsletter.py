"""drop the newsletter_signups table

LOSSY: the table holds data, which is gone after the upgrade.  The downgrade
recreates the table with the same columns, empty.

Revision ID: 0009_drop_newsletter
Revises: 0008_add_order_notes
Create Date: 2024-01-09 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009_drop_newsletter"
down_revision: str | Sequence[str] | None = "0008_add_order_notes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.drop_table("newsletter_signups")


def downgrade() -> None:
    """Downgrade schema."""
    # Same definition as in 0001_create_tables; the rows are not recoverable.
    op.create_table(
        "newsletter_signups",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("email", sa.Text, nullable=False),
        sa.Column(
            "signed_up_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
    )
