"""add orders.notes

Harmless schema-only change (nullable text column).  Not lossy on upgrade;
the downgrade drops the column and any notes written since.

Revision ID: 0008_add_order_notes
Revises: 0007_drop_legacy_code
Create Date: 2024-01-08 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008_add_order_notes"
down_revision: str | Sequence[str] | None = "0007_drop_legacy_code"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("orders", sa.Column("notes", sa.Text, nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column("orders", "notes")
