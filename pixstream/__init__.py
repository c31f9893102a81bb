"""PixStream: streaming image processing on Kafka, Faust, Pillow, S3 and PostgreSQL."""

__version__ = "0.1.0"
