"""contacts: the cohort index (first touch, created, motion, id) replaces the first-touch one

The analytics read contacts by cohort: those whose first touch (``created_at`` where none was
kept) falls in a range. ``ix_contacts_cohort`` answers both branches of that condition and
holds what the dashboard's weekly series then needs of the contact (its motion and its id,
to find its opportunities), so a range reads index entries, not contact rows. It starts with
``first_touch_at``, so every reader of ``ix_contacts_first_touch_at`` is served by it.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 16:00:00
"""
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_contacts_cohort', 'contacts', ['first_touch_at', 'created_at', 'motion', 'id'], unique=False)
    op.drop_index('ix_contacts_first_touch_at', table_name='contacts')


def downgrade() -> None:
    op.create_index('ix_contacts_first_touch_at', 'contacts', ['first_touch_at'], unique=False)
    op.drop_index('ix_contacts_cohort', table_name='contacts')
