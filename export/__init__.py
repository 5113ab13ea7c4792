"""SavedModel / TF Hub export of a trained run and its CLI (`python -m export.main`)."""

from trainers import startup

startup.import_tensorflow_quietly()
