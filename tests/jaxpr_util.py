"""Walking jaxprs and compiled programs in structural tests."""

import re


def equations(jaxpr, found=None):
    """Every equation of a jaxpr, nested calls and loop bodies included."""
    found = [] if found is None else found
    for e in jaxpr.eqns:
        found.append(e)
        for v in e.params.values():
            inner = getattr(v, "jaxpr", v)
            if hasattr(inner, "eqns"):
                equations(inner, found)
    return found


def convolution_shapes(hlo_text):
    """The output shapes of every convolution in a compiled program's HLO text (fusions included)."""
    return [
        tuple(int(d) for d in m.group(1).split(",") if d)
        for m in re.finditer(r"= \w+\[([\d,]*)\]\S* convolution\(", hlo_text)
    ]
