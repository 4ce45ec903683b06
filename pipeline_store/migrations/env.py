from shared.migrate import run_migrations
from pipeline_store.models import StoreBase

run_migrations(StoreBase.metadata, "pipeline")
