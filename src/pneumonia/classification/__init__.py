"""The classifier: its network, its training stage, its model file and running it on images."""
