"""Meta-training, pretraining and the runs around them: what makes a model file (serving never imports this)."""
