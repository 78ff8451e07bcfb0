"""add customers.phone

Adds a nullable text column.  Not lossy on upgrade; the downgrade drops the
column (and any phone numbers entered since).

Revision ID: 0002_add_customer_phone
Revises: 0001_create_tables
Create Date: 2024-01-02 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002_add_customer_phone"
down_revision: str | Sequence[str] | None = "0001_create_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("customers", sa.Column("phone", sa.Text, nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column("customers", "phone")
