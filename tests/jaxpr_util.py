"""Walking jaxprs in structural tests."""


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
