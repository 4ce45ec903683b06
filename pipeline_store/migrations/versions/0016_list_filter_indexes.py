"""contacts and opportunities: each list filter's index carries the list's order

``GET /v1/contacts`` pages by creation time and ``GET /v1/opportunities`` by qualification
time, newest first, with filters on stage, motion, first-touch channel, owner and account.
Each of those columns had an index of its own, so a filtered page read every matching row
and sorted them all to return 50 (SQLite, which keeps no statistics unless told to, always
chose that plan): 13-48 ms over 100,000 contacts, growing with history. Each index now
ends with the order's time column, so a filtered page walks its filter's index in order and
stops after one page (0.2-1.3 ms on the same store); the indexes' count is unchanged, and an
equality lookup on the column alone still uses them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 23:00:00
"""
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

FILTERS = ('stage', 'motion', 'owner', 'account_domain', 'first_touch_channel')
ORDER = {'contacts': 'created_at', 'opportunities': 'qualified_at'}


def upgrade() -> None:
    for table, at in ORDER.items():
        for column in FILTERS:
            op.drop_index(f'ix_{table}_{column}', table_name=table)
            op.create_index(f'ix_{table}_{column}', table, [column, at], unique=False)


def downgrade() -> None:
    for table in ORDER:
        for column in FILTERS:
            op.drop_index(f'ix_{table}_{column}', table_name=table)
            op.create_index(f'ix_{table}_{column}', table, [column], unique=False)
