"""lsl: label smoothing under label noise."""
