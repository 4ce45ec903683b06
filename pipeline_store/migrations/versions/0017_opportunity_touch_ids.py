"""opportunities: the first and last touch whole, as the contacts keep them

An opportunity kept its first touch without its event id and time, and its last touch as
motion, channel and campaign only, so ``GET /v1/opportunities`` answered the last touch's
form or sequence (and both touches' event id and time) as null, while the contract says
every opportunity carries both touches (motion, channel, campaign, form or sequence), and
``opportunity.qualified`` carried them whole.

The new columns are filled from the contact where its touch is the opportunity's (the same
motion, channel, campaign, and for the first touch form and sequence: qualification computes
both from the same timeline, the contact's last touch frozen at qualification); an
opportunity whose touch differs from its contact's (it qualified again after a nurture) keeps
them null until a touch synced late that occurred before its qualification writes its touches
again.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 06:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

# (column, type) added; the columns compared to find the contact's touch the opportunity's
_NEW = {'first': (('event_id', sa.String(length=64)), ('at', sa.DateTime(timezone=True))),
        'last': (('form_id', sa.String(length=200)), ('sequence', sa.String(length=200)),
                 ('event_id', sa.String(length=64)), ('at', sa.DateTime(timezone=True)))}
_SAME = {'first': ('motion', 'channel', 'campaign', 'form_id', 'sequence'),
         'last': ('motion', 'channel', 'campaign')}


def upgrade() -> None:
    with op.batch_alter_table('opportunities') as batch:
        for which, columns in _NEW.items():
            for name, type_ in columns:
                batch.add_column(sa.Column(f'{which}_touch_{name}', type_, nullable=True))
    touch = [sa.column(f'{which}_touch_{name}') for which in _NEW
             for name in ('motion', 'channel', 'campaign', 'form_id', 'sequence', 'event_id', 'at')]
    opportunities = sa.table('opportunities', sa.column('contact_id'), *touch)
    contacts = sa.table('contacts', sa.column('id'), *(sa.column(c.name) for c in touch))
    for which, columns in _NEW.items():
        o, c = (lambda name, t=t, w=which: t.c[f'{w}_touch_{name}'] for t in (opportunities, contacts))
        same = [contacts.c.id == opportunities.c.contact_id, *(c(n).is_not_distinct_from(o(n)) for n in _SAME[which])]
        op.execute(opportunities.update().values(
            {o(name): sa.select(c(name)).where(*same).scalar_subquery() for name, _ in columns}))

def downgrade() -> None:
    with op.batch_alter_table('opportunities') as batch:
        for which, columns in _NEW.items():
            for name, _ in columns:
                batch.drop_column(f'{which}_touch_{name}')
