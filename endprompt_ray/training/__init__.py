"""The one trainer (Ray Train V2 + DeepSpeed) for every method: forward, loss, schedule, resume, checkpoints."""
