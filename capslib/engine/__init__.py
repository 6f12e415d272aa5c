"""The engine: configs, data, capsule layers and routing (with the fused CPU kernel), the model, losses, probes
and training. Imports nothing of capslib outside this package; everything else builds on it.
"""
