"""Haze-ladder simulation with microsim's physics: optics, forward model, camera, pipeline."""
