"""The demo world (DESIGN §5): SynthBirds, the small CLIP trained on it, and the demo workspace."""
