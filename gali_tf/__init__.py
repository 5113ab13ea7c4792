"""gali_tf: Generalized Adversarially Learned Inference (GALI), ALI/BiGAN and ALICE.

The library never reads command-line flags: the tools in `trainers/` and `export/` turn
flags into its config dataclasses (`data.DataConfig`, `networks.NetworkConfig`,
`model.ModelConfig`, `training.TrainConfig`, ...) and call it. docs/architecture.md maps
the modules.
"""
