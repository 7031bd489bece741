"""Stage 1: what the user wrote (YAML, --set) → a validated Experiment."""
