"""encrypt webhook secrets at rest (LEADSTREAM_SECRETS_KEY)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 12:10:00

Every stored secret is encrypted with the configured key (``shared.secrets``); a copy of
the database no longer holds a secret that can sign a webhook. On SQLite ``secure_delete``
overwrites the clear text the update frees (``shared.migrate`` then checkpoints the log);
on PostgreSQL the old row versions remain until ``VACUUM`` reclaims them.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

secrets_table = sa.table("outreach_webhook_secrets", sa.column("id", sa.String), sa.column("secret", sa.Text))


def _box():  # noqa: ANN202
    from shared.secrets import SecretBox
    from shared.settings import Settings

    return SecretBox(Settings().secrets_key)


def _rewrite(change) -> None:  # noqa: ANN001
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        bind.exec_driver_sql("PRAGMA secure_delete=ON")
    rows = bind.execute(sa.select(secrets_table.c.id, secrets_table.c.secret)).all()
    for row_id, stored in rows:
        new = change(stored)
        if new != stored:
            bind.execute(sa.update(secrets_table).where(secrets_table.c.id == row_id).values(secret=new))


def upgrade() -> None:
    box = _box()
    _rewrite(lambda stored: stored if box.looks_encrypted(stored) else box.encrypt(stored))


def downgrade() -> None:
    box = _box()
    _rewrite(lambda stored: box.decrypt(stored) if box.looks_encrypted(stored) else stored)
