"""Rendering features as pictures, and measuring what the pictures show (docs/ARCHITECTURE.md §Render).

- `base`: the renderer contract (`Renderer.render(features n × d, seed) → uint8 n × H × W × 3`), the points
  z + t·Δ along a run's edits, and the render cache per (renderer, store, run, rows, t, seed);
- `inverter`: a feature-inversion decoder trained on a store's own images (`train_renderer`,
  `load_inverter`); the demo's is bundled in `assets/synthbirds-inverter/`;
- `unclip`: Stable Diffusion 2.1 unCLIP through diffusers (the optional `[render]` extra);
- `flip`: re-encode renderings with the store's backbone and classify the attribute: flip rates with a null;
- `quality`: the inverter's quality numbers; `backbone`: the store's own encoder and classifiers.

Nothing here is imported by `import hsfm_core`: torch and the backbone load only when rendering.
"""
