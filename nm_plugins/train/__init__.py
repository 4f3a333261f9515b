"""Training entry points (classification) and the runtime pieces every trainer shares."""
