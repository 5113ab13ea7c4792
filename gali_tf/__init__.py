"""gali_tf: Generalized Adversarially Learned Inference (GALI), ALI/BiGAN and ALICE.

The library never reads command-line flags: entry points in `trainers/` and
`export/` turn flags into the config dataclasses defined here and call it.
"""
