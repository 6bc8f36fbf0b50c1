"""The demo world (docs/ARCHITECTURE.md §Demo): SynthBirds, the small CLIP trained on it, and the demo workspace."""
