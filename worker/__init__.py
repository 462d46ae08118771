"""hyperfleet's worker: reserves trials from MongoDB, evaluates them, writes results back."""
