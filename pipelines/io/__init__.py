"""Manifests, storage access and output writing (fsspec: local paths, file://, s3://, ...)."""
