"""The engines that propose a study's trials (Optuna, Keras Tuner) and when a study has done
enough."""
