"""The checkpoint store: the persisted domain and its two implementations."""
