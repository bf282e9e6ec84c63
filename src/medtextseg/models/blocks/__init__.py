"""Image-side building blocks shared by the presets (attention refinements of feature maps)."""
