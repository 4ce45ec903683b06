"""The pipeline store: the schema (models and Alembic migrations) of the database that
qualification writes and pipeline reads.

It is neither spine nor a service: services may import it, the spine (``shared/``) may
not (tests/unit/test_structure.py). It imports only the spine.
"""

DATABASE = "pipeline"  # its name: LEADSTREAM_PIPELINE_DATABASE_URL, <data dir>/pipeline.db
