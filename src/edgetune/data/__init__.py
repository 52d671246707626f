"""The run's inputs: pin what params.yaml names (stage inputs), fetch the base model
(fetch-model), and load, clean and split the data (prepare)."""
