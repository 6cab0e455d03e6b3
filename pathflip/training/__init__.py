"""Training PathFLIP with the Hugging Face `Trainer`: arguments, data checks, the sampling collator, the `Trainer`
subclass and the stages (alignment, then the LLM's caption and instruct stages). `pathflip train` and the
repository's train.py both run `pathflip.training.run.main`."""
