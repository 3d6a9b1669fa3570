"""Worked porting examples: each module has ``torch_model(dtype)``, ``flax_model(dtype)`` and
``example_inputs(dtype)`` factories, usable with ``ssm-metarl parity --torch ... --flax ...``.

- ``gru_policy``: a small recurrent policy, ``nn.GRU`` + ``nn.Linear``;
- ``cnn``: Conv2d, BatchNorm2d, LayerNorm, Linear, channels-first input;
- ``broken_gelu``: a port that uses ``jax.nn.gelu``'s default tanh approximation (and its fix).
"""
