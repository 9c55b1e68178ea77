"""One site's recipe: the run's settings for a site (model, LoRA, training, generation),
and what a site does with them (train, evaluate, predict) and the protocols built from it
(baselines, new-site adaptation, personalization). Above training and evaluation, which it
combines; below federation, whose clients run it."""
