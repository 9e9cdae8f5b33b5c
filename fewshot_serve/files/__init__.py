"""Our files: the model file (weights + recipe), how its weights are stored, imported backbones, crash-safe writes."""
