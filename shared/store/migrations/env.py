from shared.migrate import run_migrations
from shared.store.models import StoreBase

run_migrations(StoreBase.metadata, "pipeline")
