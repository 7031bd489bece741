"""evalrun: batch evaluation of chat-completion APIs into Parquet reports."""

__version__ = "0.1.0"
