"""A model reference becomes a folder once, here, so that every later step takes the same `Model`."""
