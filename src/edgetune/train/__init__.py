"""Fine-tuning: LoRA or QLoRA with TRL on the quantized base's own weights, resumable, on one or
several devices (stage train); and the adapter merged into the base (stage merge)."""
