"""Tools beside the pipeline steps (not steps themselves)."""
