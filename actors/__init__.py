"""The actor system: supervisor, document workers, brokers and processors."""
