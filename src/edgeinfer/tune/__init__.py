"""`edgeinfer tune`: the fastest serving configuration for a model on this device."""
