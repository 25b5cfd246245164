"""The LlamaCloud chat API: payload models and an async client."""
