"""Sending: lanes per provider × model and their workers, the one retry loop, stops, slots, the budget."""
