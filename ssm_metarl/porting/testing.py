"""``assert_port_matches``: the porting kit as one assertion in a user's own pytest suite."""

from __future__ import annotations

from typing import Any

import torch
from flax import nnx

from ssm_metarl.porting.rows import PortingReport, compare_models


def assert_port_matches(torch_model: torch.nn.Module, flax_model: nnx.Module, inputs: Any, labels: Any = None,
                        **options: Any) -> PortingReport:
    """Run :func:`~ssm_metarl.porting.compare_models` and fail with its whole report if a row fails.

    ``options`` are ``compare_models``'s (``kwargs=``, ``step=``, ``rows=``, ``train=``, ``tolerances_override=``,
    ``overrides=``, ...). Returns the report when every row passes, for further checks.

    Example::

        def test_my_port():
            assert_port_matches(MyTorchNet(), MyFlaxNet(rngs=nnx.Rngs(0)), np.zeros((4, 8), np.float32),
                                rows=("weights", "forward", "gradients"))
    """
    report = compare_models(torch_model, flax_model, inputs, labels, **options)
    if not report.passed:
        failed = [r.quantity for r in report.rows if not r.passed]
        raise AssertionError(f"the port differs from the torch model in {len(failed)} row(s) ({', '.join(failed)}):"
                             f"\n{report.table()}")
    return report
