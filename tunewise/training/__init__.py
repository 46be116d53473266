"""Fine-tuning: LoRA training, the adapter cache, the learning curve, the forgetting check."""
