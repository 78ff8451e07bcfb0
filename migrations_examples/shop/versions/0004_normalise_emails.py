"""normalise customer emails to lower case

Data migration.  LOSSY: the original capitalisation of every changed email is
overwritten and the downgrade cannot bring it back.

Revision ID: 0004_normalise_emails
Revises: 0003_index_orders
Create Date: 2024-01-04 00:00:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004_normalise_emails"
down_revision: str | Sequence[str] | None = "0003_index_orders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.execute("UPDATE customers SET email = lower(email) WHERE email <> lower(email)")


def downgrade() -> None:
    """Downgrade schema."""
    # Intentionally a no-op: the original case of the emails is lost by the
    # upgrade and cannot be reconstructed from the database alone.  (That is
    # the point of this example: dbrollback restores it from a snapshot.)
