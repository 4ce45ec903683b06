-- One PostgreSQL server, one database per store: capture and outreach own theirs,
-- qualification and pipeline share the pipeline store. `leadstream migrate` builds the schemas.
CREATE DATABASE capture;
CREATE DATABASE outreach;
CREATE DATABASE pipeline;
