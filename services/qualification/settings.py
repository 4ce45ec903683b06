"""The qualification service's settings: the spine's, and what qualification alone reads
(the scoring policies, ``Settings.scoring_file``, are read by the pipeline service too)."""

from __future__ import annotations

from shared.settings import Settings


class QualificationSettings(Settings):
    # the qualification workers' consumer group (LEADSTREAM_KAFKA_CONSUMER_GROUP)
    kafka_consumer_group: str = "leadstream-qualification"
