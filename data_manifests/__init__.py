"""The built-in simulation manifests (default, paper-like) and the example acquisition manifest."""
