"""store products.weight_kg as a whole number of kilograms

Changes products.weight_kg from numeric(8,3) to integer, rounding to the
nearest kilogram.  LOSSY: the fractional part is discarded; the downgrade
restores the numeric(8,3) type but every weight stays a whole number.

Revision ID: 0006_weight_to_integer
Revises: 0005_split_full_name
Create Date: 2024-01-06 00:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006_weight_to_integer"
down_revision: str | Sequence[str] | None = "0005_split_full_name"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.alter_column(
        "products",
        "weight_kg",
        type_=sa.Integer(),
        existing_type=sa.Numeric(8, 3),
        existing_nullable=True,
        postgresql_using="round(weight_kg)::integer",
    )


def downgrade() -> None:
    """Downgrade schema."""
    # The fractions were lost on upgrade; this only restores the column type.
    op.alter_column(
        "products",
        "weight_kg",
        type_=sa.Numeric(8, 3),
        existing_type=sa.Integer(),
        existing_nullable=True,
        postgresql_using="weight_kg::numeric(8,3)",
    )
