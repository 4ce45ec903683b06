"""The qualification service's settings: the spine's, and what qualification alone reads
(the scoring policies, ``Settings.scoring_file``, are read by the pipeline service too; the
channel rules only by qualification)."""

from __future__ import annotations

from pathlib import Path

from shared.settings import Settings


class QualificationSettings(Settings):
    # the qualification workers' consumer group (LEADSTREAM_KAFKA_CONSUMER_GROUP)
    kafka_consumer_group: str = "leadstream-qualification"

    @property
    def channels_file(self) -> Path:
        """The channel rules (``config_dir``): docs/channels.md."""
        return self.config_dir / "channels.yaml"
