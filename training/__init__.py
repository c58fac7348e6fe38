"""A synthetic world with known engagement probabilities, training and evaluation."""
