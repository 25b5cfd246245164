"""A fake LlamaCloud chat API with realistic sessions, live traffic and injectable faults."""
