"""outbox: items the old attempt limit gave up on ('failed') become dead letters ('dead'), which
the console lists with a retry button; pending items are no longer given up after 5 attempts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from typing import Sequence, Union

from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.execute("UPDATE outbox SET status = 'dead' WHERE status = 'failed'")


def downgrade() -> None:
    op.execute("UPDATE outbox SET status = 'failed' WHERE status = 'dead'")
