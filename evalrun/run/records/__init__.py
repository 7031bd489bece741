"""The typed records that flow through a run, answers coerced field by field, logprobs kept flat."""
