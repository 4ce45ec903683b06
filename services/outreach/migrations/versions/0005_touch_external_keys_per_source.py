"""outreach touches: external ids unique per source (external_key), not across sources

A touch's ``external_id`` was unique in the whole table, so two sales tools with their own
API keys that both sent ``"123"`` collided (the second tool's touch was answered
``duplicate`` and lost), as did a webhook integration ``x``'s event ``y`` (stored as
``x:y``) and an API caller's ``"x:y"``. Duplicates are now found by ``external_key``, the
SHA-256 of ``[kind, scope, id]`` (``services.outreach.external_keys``); ``external_id``
stays as the tool gave it, no longer unique.

Existing rows get their key here:
- webhook rows (``integration`` set): kind ``webhook``, scope the integration, and the
  tool's event id after the ``<integration>:`` prefix (the whole id if it lacks it);
- API rows: kind ``api``, scope the name of the row's API key (``outreach_api_keys``,
  revoked keys included: a key rotated under the same name keeps its repeats duplicates).
  A row whose key is not recorded (no ``api_key_id``, or a key row deleted by hand) gets
  the empty name, which no key has (names are 1 to 200 characters): such rows still
  deduplicate among themselves, and no caller's new touch collides with them.

Run it with outreach stopped: a process of the previous release writes touches without a
key (their repeats would then be accepted again) and relies on the unique ``external_id``
this migration drops. The downgrade restores that uniqueness, and refuses (nothing changed)
if two stored touches of different sources share an external id.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 09:00:00
"""
import hashlib
import json

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

touches = sa.table('outreach_touches', sa.column('event_id', sa.String), sa.column('external_id', sa.String),
                   sa.column('external_key', sa.String), sa.column('integration', sa.String),
                   sa.column('api_key_id', sa.String))
api_keys = sa.table('outreach_api_keys', sa.column('id', sa.String), sa.column('name', sa.String))

_PAGE = 5000
# PostgreSQL named 0001's unnamed UNIQUE (external_id) itself; SQLite keeps no name, so batch
# mode names the reflected constraint by this convention to drop it (and the downgrade makes
# it again under the name each backend gave it)
_NAMING = {'uq': 'uq_%(table_name)s_%(column_0_name)s'}


def _unique_name() -> str:
    if op.get_bind().dialect.name == 'postgresql':
        return 'outreach_touches_external_id_key'
    return 'uq_outreach_touches_external_id'


def _key(kind: str, scope: str, external_id: str) -> str:
    # services.outreach.external_keys.external_key, frozen here: the stored format
    text = json.dumps([kind, scope, external_id], ensure_ascii=False, separators=(',', ':'))
    return hashlib.sha256(text.encode()).hexdigest()


def _key_of(external_id: str, integration: str | None, key_name: str | None) -> str:
    if integration is not None:
        prefix = f'{integration}:'
        tool_id = external_id[len(prefix):] if external_id.startswith(prefix) else external_id
        return _key('webhook', integration, tool_id)
    return _key('api', key_name or '', external_id)


def _fill_keys() -> None:
    """Every stored external id's key, a page of rows at a time (in event id order)."""
    bind = op.get_bind()
    names = dict(bind.execute(sa.select(api_keys.c.id, api_keys.c.name)).all())
    update = (sa.update(touches).where(touches.c.event_id == sa.bindparam('_event_id'))
              .values(external_key=sa.bindparam('_external_key')))
    after = ''
    while True:
        rows = bind.execute(
            sa.select(touches.c.event_id, touches.c.external_id, touches.c.integration, touches.c.api_key_id)
            .where(touches.c.external_id.is_not(None), touches.c.event_id > after)
            .order_by(touches.c.event_id).limit(_PAGE)).all()
        if not rows:
            return
        bind.execute(update, [
            {'_event_id': event_id, '_external_key': _key_of(external_id, integration, names.get(api_key_id))}
            for event_id, external_id, integration, api_key_id in rows])
        after = rows[-1].event_id


def upgrade() -> None:
    with op.batch_alter_table('outreach_touches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('external_key', sa.String(length=64), nullable=True))
    _fill_keys()
    with op.batch_alter_table('outreach_touches', schema=None, naming_convention=_NAMING) as batch_op:
        batch_op.create_index(batch_op.f('ix_outreach_touches_external_key'), ['external_key'], unique=True)
        batch_op.drop_constraint(_unique_name(), type_='unique')


def downgrade() -> None:
    shared = op.get_bind().execute(
        sa.select(touches.c.external_id, sa.func.count()).where(touches.c.external_id.is_not(None))
        .group_by(touches.c.external_id).having(sa.func.count() > 1).order_by(touches.c.external_id).limit(5)
    ).all()
    if shared:
        examples = ', '.join(f'{external_id!r} ({count} touches)' for external_id, count in shared)
        raise RuntimeError(
            'cannot downgrade outreach below 0005: external ids are unique per source now, and touches of '
            f'different sources share an external id (e.g. {examples}); revision 0004 keeps one touch per '
            'external id in the whole table. Nothing was changed; set the external_id of all but one of each '
            'to NULL (or delete them) first, knowing their repeats will then be accepted again.')
    with op.batch_alter_table('outreach_touches', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outreach_touches_external_key'))
        batch_op.drop_column('external_key')
        batch_op.create_unique_constraint(_unique_name(), ['external_id'])
