"""One trial: its data and model, Keras training, stopping and checkpoints; the same for every
engine."""
