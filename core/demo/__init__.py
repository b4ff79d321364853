"""The embedded demo model: procedural data, training, evaluation."""
