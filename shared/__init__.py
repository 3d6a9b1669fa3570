"""Backend-neutral parts of ssm-metarl: configs, parameter layout, weight files, comparison, tasks.

Nothing in this package imports ``torch_impl`` or ``jax_impl``; both backends import from here.
"""
