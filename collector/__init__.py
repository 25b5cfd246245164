"""llamacloud-collector: Prometheus metrics for LlamaCloud chat sessions."""

__version__ = "0.1.0"
