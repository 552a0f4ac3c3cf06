"""Audio data for jepa_jax: audio I/O, log-mel front ends, mel shards, the Grain training
pipeline, the labelled-task format and the embedded synthetic default corpus."""
