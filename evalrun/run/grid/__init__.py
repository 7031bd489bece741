"""The grid: cells and the lazy request stream with stable ids; the dataset rows."""
