"""index orders by customer and placement time

Schema-only, not lossy.

Revision ID: 0003_index_orders
Revises: 0002_add_customer_phone
Create Date: 2024-01-03 00:00:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003_index_orders"
down_revision: str | Sequence[str] | None = "0002_add_customer_phone"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_orders_customer_id", "orders", ["customer_id"])
    op.create_index("ix_orders_placed_at", "orders", ["placed_at"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_orders_placed_at", table_name="orders")
    op.drop_index("ix_orders_customer_id", table_name="orders")
