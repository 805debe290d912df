"""Numbers as the notebooks and reports print them: at the precision the science supports, so the printed digits
are the same on every CPU and thread count, and a real change (0.5 points of a metric, 2 % of a count) still shows.

    hpnb.printing.pct(0.7783)       -> "77.8"    shares, purities, accuracies: percent with one decimal
    hpnb.printing.count(853.31)     -> "853"     means of counts: three significant digits
    hpnb.printing.expect(acc, 51.4, tol=1.0, what="k-means Acc")   # the number a notebook's text is written for

`expect` prints nothing while the value lies within the tolerance of the number the surrounding text describes,
and one explanatory line when it does not: under `pytest --nbval` that line is a changed output, so the check
fails; a student who changed a parameter reads why the text and the run now disagree.
"""

from __future__ import annotations

import math


def pct(share: float, decimals: int = 1) -> str:
    """A share in [0, 1] as a percentage with one decimal (no % sign): 0.7783 -> '77.8'."""
    return f"{100 * float(share):.{decimals}f}"


def count(x: float, digits: int = 3) -> str:
    """A (mean) count to `digits` significant digits, without exponent: 853.31 -> '853', 57.8 -> '57.8', 4.0 -> '4'."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    rounded = round(x, decimals)
    text = f"{rounded:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def num(x: float, decimals: int = 2) -> str:
    """A dimensionless value (a loss, a cosine, a weight) to a fixed number of decimals."""
    return f"{float(x):.{decimals}f}"


def expect(value: float, ref: float, tol: float, what: str = "this number") -> None:
    """Check a number the notebook's text relies on: silent when |value − ref| ≤ tol, one line otherwise.

    Returns nothing, so a notebook cell that ends with it displays nothing."""
    value = float(value)
    if not abs(value - ref) <= tol:
        print(
            f"note: {what} = {value:.4g} in this run, but the text here was written for {ref:g} ± {tol:g} "
            "(the default parameters). If you changed a parameter that is expected; otherwise the result changed."
        )


__all__ = ["pct", "count", "num", "expect"]
