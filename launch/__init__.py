"""absl entry points that compose the component packages into stages (data, tokenizer, latents,
dynamics, eval), with checkpoints, logging and evaluation reports."""
