"""Banned users (a ``banned`` status, the notice's time) and an index for the admin's ranges.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUS = "ck_messages_status"
OLD_STATUSES = "status IN ('received', 'answered', 'failed', 'rate_limited')"
NEW_STATUSES = "status IN ('received', 'answered', 'failed', 'rate_limited', 'banned')"
RECEIVED = sa.text("status = 'received'")
UNDELIVERED = sa.text("reply_to_id IS NOT NULL AND delivered_at IS NULL")


def _replace_status_check(condition: str) -> None:
    if op.get_context().dialect.name != "sqlite":
        op.drop_constraint(op.f(STATUS), "messages", type_="check")
        op.create_check_constraint(op.f(STATUS), "messages", condition)
        return
    # SQLite cannot alter a CHECK constraint: the table is copied into a new one. The
    # partial indexes are dropped first and made again after, so their WHERE clauses stay
    # exactly as they were (the copy would rebuild them from reflection).
    op.drop_index("ix_messages_received", "messages")
    op.drop_index("ix_messages_undelivered", "messages")
    with op.batch_alter_table(
        "messages", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.drop_constraint(op.f(STATUS), type_="check")
        batch.create_check_constraint(op.f(STATUS), sa.text(condition))
    op.create_index("ix_messages_received", "messages", ["id"], sqlite_where=RECEIVED)
    op.create_index(
        "ix_messages_undelivered", "messages", ["reply_to_id"], sqlite_where=UNDELIVERED
    )


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("ban_notified_at", sa.DateTime(timezone=True), nullable=True))
    _replace_status_check(NEW_STATUSES)
    op.create_index("ix_messages_created_at", "messages", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_created_at", "messages")
    # The older schema has no word for a banned turn; it was refused, as a failed one is.
    op.execute("UPDATE messages SET status = 'failed' WHERE status = 'banned'")
    _replace_status_check(OLD_STATUSES)
    with op.batch_alter_table("users") as batch:
        batch.drop_column("ban_notified_at")
