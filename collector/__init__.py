"""llamacloud-collector: Prometheus metrics for LlamaCloud chat sessions."""

from collector.build import VERSION as __version__

__all__ = ["__version__"]
