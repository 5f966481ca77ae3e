"""What the sink process runs: the stream consumer, enrichment, attribution, SQL."""
