"""drop products.legacy_code

LOSSY: the column holds data, which is gone after the upgrade.  The downgrade
re-adds the column as nullable text, empty (all NULL).

Revision ID: 0007_drop_legacy_code
Revises: 0006_weight_to_integer
Create Date: 2024-01-07 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007_drop_legacy_code"
down_revision: str | Sequence[str] | None = "0006_weight_to_integer"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.drop_column("products", "legacy_code")


def downgrade() -> None:
    """Downgrade schema."""
    # The dropped values cannot be recovered here; the column comes back empty.
    op.add_column("products", sa.Column("legacy_code", sa.Text, nullable=True))
