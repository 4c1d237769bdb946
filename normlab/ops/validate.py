"""Argument checks shared by ops and layers.

Every check raises ``ValueError`` (``TypeError`` for a wrong type) with the
same four parts: the argument, what was expected, ``Received: arg=value``,
and how to fix it. Checks that do not depend on shapes run in ``__init__``;
those that do run in ``build`` (layers) or at call time (ops).
"""

from __future__ import annotations

import numbers


def error_message(argument: str, expected: str, received: str, fix: str = "") -> str:
    """Formats the one error style normlab uses everywhere."""
    message = f"Invalid `{argument}`: expected {expected}. Received: {received}."
    if fix:
        message += f" {fix}"
    return message


def check_epsilon(epsilon) -> float:
    """Returns ``epsilon`` as a float, rejecting negative or non-numbers."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(
            error_message(
                "epsilon",
                "a non-negative float",
                f"epsilon={epsilon!r} of type {type(epsilon).__name__}",
                "Pass a float such as epsilon=1e-3.",
            )
        )
    if not epsilon >= 0:  # also rejects NaN
        raise ValueError(
            error_message(
                "epsilon",
                "a non-negative float (it is added to the variance)",
                f"epsilon={epsilon!r}",
                "Use a small positive value such as epsilon=1e-3 (the default).",
            )
        )
    return float(epsilon)


def check_groups(groups) -> int:
    """Checks the shape-independent part of ``groups``: a positive int or -1."""
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(
            error_message(
                "groups",
                "an integer (a positive number of groups, or -1 for one group per channel)",
                f"groups={groups!r} of type {type(groups).__name__}",
                "Pass an int such as groups=32, or groups=-1 for instance normalization.",
            )
        )
    if groups == 0 or groups < -1:
        raise ValueError(
            error_message(
                "groups",
                "a positive integer, or -1 for one group per channel",
                f"groups={groups}",
                "Use a divisor of the channel count, or groups=-1 for instance normalization.",
            )
        )
    return int(groups)


def resolve_groups(groups: int, channels: int, axis: int) -> int:
    """Returns the number of groups for ``channels`` channels (-1 -> channels)."""
    if groups == -1:
        return channels
    if groups > channels:
        raise ValueError(
            error_message(
                "groups",
                f"at most the number of channels ({channels})",
                f"groups={groups} with {channels} channels (axis={axis})",
                f"Use a divisor of {channels}, or groups=-1 for instance normalization.",
            )
        )
    if channels % groups:
        divisors = [d for d in range(1, channels + 1) if channels % d == 0]
        raise ValueError(
            error_message(
                "groups",
                f"a divisor of the number of channels ({channels}), so that every "
                "group has the same number of channels",
                f"groups={groups} with {channels} channels (axis={axis})",
                f"Use one of {divisors}, or groups=-1 for instance normalization.",
            )
        )
    return groups


def check_momentum(momentum) -> float:
    """Checks a moving-average momentum lies in [0, 1]."""
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 <= momentum <= 1:
        raise ValueError(
            error_message(
                "momentum",
                "a float in [0, 1], the weight kept by the moving average at each step "
                "(Keras convention; PyTorch's momentum m corresponds to 1 - m)",
                f"momentum={momentum!r}",
                "Use a value such as momentum=0.99 (the default).",
            )
        )
    return float(momentum)
