"""Stage 3: results.parquet → scores, summaries, comparisons, costs."""
