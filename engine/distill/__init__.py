"""Knowledge distillation: loss kinds, the fused chunked output-projection loss, hidden-state losses."""
