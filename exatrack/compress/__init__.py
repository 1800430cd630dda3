"""The steps that turn a model into a smaller checkpoint, each a tracked run, and the recipes they run."""
