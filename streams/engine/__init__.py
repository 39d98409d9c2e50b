"""Pure logic, records in and records out, no Kafka client: invocations, contexts, journals,
the partition processor, the delay store."""
