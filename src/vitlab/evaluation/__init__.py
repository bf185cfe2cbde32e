"""Evaluation: accuracy, robust accuracy, k-NN, linear probe, episodes, GZSL."""
