"""The command-line tools (`python -m trainers.main`, ...): flags in, one library call.

Importing the package imports TensorFlow without its C++ start-up log (trainers.startup).
"""

from trainers import startup

startup.import_tensorflow_quietly()
