"""Runs the engine on Kafka: the worker's Kafka thread, the committer, offsets, topic admin,
dead letters, the delay reader, and the local broker."""
