"""What every phase shares: params.yaml and its checks, safe file writing and checked readers,
messages, the hub, consent for a model's code, and the run's vocabulary (tasks, labels, prompts,
variant names). It imports no other phase."""
