"""Local supervised fine-tuning at a site: examples, batches, schedule, the loop."""
