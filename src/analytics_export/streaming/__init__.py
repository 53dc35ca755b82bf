"""Streaming exports: new events of a project delivered continuously, in ingestion order, at least
once, to a webhook, object storage or a message broker."""
