"""Scale-out: shards, merge, --workers and Ray."""
