"""What is on Kafka, and no behaviour: records, topics, ids, the partitioner, header rules."""
