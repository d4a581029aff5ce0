"""The on-disk contract between the data stage and everything that reads its shards.

See data_schemas/README.md for the documented layout of a shard.
"""

from data_schemas.sample import (
    SCHEMA_VERSION,
    EntityRecord,
    ImageSegment,
    Manifest,
    QuarantineRecord,
    SampleRecord,
    Segment,
    ShardReport,
    TextSegment,
)

__all__ = [
    "SCHEMA_VERSION",
    "EntityRecord",
    "ImageSegment",
    "Manifest",
    "QuarantineRecord",
    "SampleRecord",
    "Segment",
    "ShardReport",
    "TextSegment",
]
