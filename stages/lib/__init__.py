"""Library code shared by the stages: plain functions on tensors, paths and values."""
