"""The Kafka side of the ranking worker: wire contracts, batching, the Faust app and tools."""
