"""The results side by side: metrics.json, summary.md, its tables and pictures, the recommended
variant, and the machine they were measured on (stage report)."""
