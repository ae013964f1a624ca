"""Training from ladder stores: streaming data (:mod:`training.data`), the one training loop
(:mod:`training.loop`) and what each trainer optimises (:mod:`training.tasks`)."""
