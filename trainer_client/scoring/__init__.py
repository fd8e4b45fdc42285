"""Getting STAR scores to the trainer: async scorers, prefetching, the persistent score cache."""
