"""What a run keeps: the journal, results.parquet, the response cache, the run directory, object storage."""
