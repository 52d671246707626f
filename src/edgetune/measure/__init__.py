"""What each variant costs and buys: accuracy or perplexity (evaluate), KL divergence against f16
(quality), speed (bench), the classical baseline (baseline), and the tests that say whether two
variants differ (significance)."""
