"""Fine-tuning recipes: LoRA, full and DPO training, the adapter cache, the learning curve
and the forgetting check. Like torchtune's recipes, each is handed its pieces (a model path,
a backend, a prompt function, train/predict callables), never the run's context; the glue
that takes them out of a run is :mod:`tunewise.finetune_checks` (and the rungs)."""
