"""The static-graph decode runner (buckets, in-place metadata, CUDA graph per bucket)."""

from sglang_dcp.runner.graph import Bucket, DecodeModel, DecodeRunner, capture_buckets, pick_bucket

__all__ = ["Bucket", "DecodeModel", "DecodeRunner", "capture_buckets", "pick_bucket"]
