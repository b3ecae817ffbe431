"""The scalar functions a generated kernel calls: their source templates and the tanh helper."""

from __future__ import annotations

FN = {
    "exp": "np.exp({a})",
    "log": "np.log({a})",
    "sqrt": "np.sqrt({a})",
    "recip": "one / {a}",
    "negate": "-{a}",
    "square": "{a} * {a}",
    "abs": "abs({a})",
    "relu": "np.maximum({a}, zero)",
    "drelu": "one if {a} > zero else zero",
    "sigmoid": "one / (one + np.exp(-{a}))",
    "dsigmoid": "{s} * (one - {s})",
    "tanh": "tanh_({a})",  # libm's tanh is a scalar call costing ~30 ns: see TANH_PQ
    "dtanh": "one - {s} * {s}",
    "flush_subnormal": "{a} * zero if abs({a}) < tiny else {a}",  # a zero of x's sign; NaN compares False
    "erf": "math.erf({a})",
    "round": "dt({a})",  # made by the algebra only: a float64 combination of sums, rounded once
}
HELPER = {"dsigmoid": "sigmoid", "dtanh": "tanh"}  # derivatives reuse the function's value
BINFN = {"max": "np.maximum", "min": "np.minimum"}  # binary operations written as calls (NaN propagates)
# An array to a scalar power: numpy's ``**`` takes square, sqrt and reciprocal for these exponents
# (sqrt(-0.0) is -0.0 and sqrt(-inf) NaN, where pow gives 0.0 and inf)
POW = "({a} * {a} if {b} == 2.0 else np.sqrt({a}) if {b} == 0.5 else one / {a} if {b} == -1.0 else {a} ** {b})"

# tanh by Cody & Waite's method (Software Manual for the Elementary Functions, 1980, ch. 13): a
# rational function of x^2 below ln(3)/2, 1 - 2 / (exp(2|x|) + 1) above, with the published
# coefficients for each precision. Within 1.5 ulp of the exact value in both dtypes (tested
# against long double), and 5x faster than libm's tanh here (it costs one exp).
TANH_PQ = {
    "float32": ("(dt(-0.3831010665e-2) * g + dt(-0.8237728127)) * g", "g + dt(0.2471319654e1)"),
    "float64": ("((dt(-0.96437492777225469787) * g + dt(-0.99225929672236083313e2)) * g"
                " + dt(-0.16134119023996228053e4)) * g",
                "((g + dt(0.11274474380534949335e3)) * g + dt(0.22337720718962312926e4)) * g"
                " + dt(0.48402357071988688686e4)"),
}


def tanh_helper(dtype: str) -> list[str]:
    p, q = TANH_PQ[dtype]
    return ["@njit(cache=True, error_model='numpy', nogil=True)", "def tanh_(x):", "    f = abs(x)",
            "    if f > dt(0.5493061443340548):  # ln(3) / 2", "        r = dt(0.5) - one / (np.exp(f + f) + one)",
            "        r = r + r", "    else:", "        g = f * f", f"        r = f + f * (({p}) / ({q}))",
            "    return np.copysign(r, x)"]
