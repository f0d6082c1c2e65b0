"""The floor both halves stand on: errors, files, configs, the checkpoint format, the model registry, plotting
helpers and the training loop. Nothing here imports ``similarity`` or ``reconstruction``."""
