"""Stage 2: Experiment → grid → rate-limited requests → journal → results.parquet."""
