"""Using a registered classifier outside the pipeline: `tlpipe predict` (predict.py) and `tlpipe serve` (app.py)."""
