"""Before launch: whether a training configuration fits on the GPUs it names, and how long a step takes."""
