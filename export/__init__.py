"""SavedModel / TF Hub export of a trained run and its CLI (`python -m export.main`)."""
