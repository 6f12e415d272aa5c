"""The engine: configs, data, capsule layers and routing (incl. the fused CPU kernel), the model, losses, probes, training.

Imports nothing of capslib outside this package; everything else builds on it.
"""
