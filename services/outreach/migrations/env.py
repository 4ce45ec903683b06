from services.outreach.models import Base
from shared.migrate import run_migrations

run_migrations(Base.metadata, "outreach")
