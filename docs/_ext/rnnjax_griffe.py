"""A Griffe extension for rnnjax's API reference (``mkdocs.yml`` loads it; not part of the package).

What it does, once the package is loaded:

1. **Every public name has a docstring**: each name in the ``__all__`` of ``rnnjax``,
   ``rnnjax.functional``, ``rnnjax.cudnn``, ``rnnjax.nnx`` and ``rnnjax.keras`` (and each public
   method of a public class) without one is a warning, so ``mkdocs build --strict`` fails.
2. **Signatures as users call them**: a Flax linen layer is a dataclass whose ``__init__`` Griffe
   cannot see, and an NNX layer's ``__init__(*args, **kwargs)`` binds its linen twin's fields, so
   both get the signature that ``inspect`` and ``rnnjax.nnx._args`` give at run time.
3. **Every argument described, with its type and default**: a class's ``Args:`` section wins;
   other arguments take the shared description in ``arguments.py`` (the seed's wording for Keras's
   arguments). An argument described nowhere is a warning. A docstring that describes an argument
   the signature lacks is one too (Griffe's own check).
4. **Sphinx roles and literal blocks to Markdown**: ``:class:`X``` becomes a link to the rendered
   ``X`` (or code, when ``X`` is not in the reference), and an RST literal block (``::``) becomes a
   fenced block labelled as a sketch that is not run (the examples that run are ``Examples:``
   sections, executed by ``tests/test_docs_examples.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pathlib
import re
import sys

import griffe

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from arguments import ARGUMENTS, NNX, TYPES  # noqa: E402

PUBLIC_MODULES = ("rnnjax", "rnnjax.functional", "rnnjax.cudnn", "rnnjax.nnx", "rnnjax.keras")
# Flax's own dataclass fields of every linen module: not arguments a user passes.
FLAX_FIELDS = ("parent", "name")
ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc):`~?([^`]+)`")
LITERAL = re.compile(r"(?P<lead>[^\n]*?)(?P<colons>\s?::)\n\n(?P<body>(?:(?: {4}[^\n]*)?\n)+)")

logger = griffe.get_logger("rnnjax_docs")


def _public_names():
    """``{public path: griffe path of the object}`` for every name the reference renders."""
    names = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            target = obj.__name__ if inspect.ismodule(obj) else f"{getattr(obj, '__module__', module_name)}.{name}"
            names[f"{module_name}.{name}"] = target
    return names


class RnnjaxDocs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name != "rnnjax":
            return
        self.pkg = pkg
        for module_name in PUBLIC_MODULES:  # the run-time __all__ (Griffe cannot evaluate `*KERAS_LAYERS`)
            module = pkg if module_name == "rnnjax" else pkg[module_name.removeprefix("rnnjax.")]
            module.exports = list(importlib.import_module(module_name).__all__)
        self.public = _public_names()
        self._inspect_made_classes()
        # canonical path -> the public path it is rendered under (the first module that exports it)
        self.rendered = {}
        for public, canonical in self.public.items():
            if self._lookup(public, follow=False) is not None:
                self.rendered.setdefault(canonical, public)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = self._markdown(obj.docstring.value, obj)
        done = set()
        for public in self.public:
            module_name, _, name = public.rpartition(".")
            obj = self._lookup(public)
            if obj is None:
                logger.warning("%s: exported in __all__ but not found by Griffe", public)
                continue
            if not obj.docstring or not obj.docstring.value.strip():
                logger.warning("%s: a public name without a docstring", public)
            runtime = getattr(importlib.import_module(module_name), name)
            if obj.is_class and obj.path not in done and not issubclass(runtime, BaseException):
                done.add(obj.path)
                self._document_class(obj, runtime, public)

    def _inspect_made_classes(self):
        """Classes made by a factory (``ConvLSTM2D = _layer_class(2, ...)``) are attributes to Griffe's
        static analysis: they are replaced by what Griffe's inspector sees at run time."""
        inspected = {}
        for public, canonical in self.public.items():
            module_name, _, name = public.rpartition(".")
            runtime = getattr(importlib.import_module(module_name), name)
            found = self._lookup(canonical, follow=False)
            if not inspect.isclass(runtime) or (found is not None and found.is_class):
                continue
            home = runtime.__module__
            if home not in inspected:
                inspected[home] = griffe.inspect(home)
            made = inspected[home][runtime.__qualname__]
            self.pkg[home.removeprefix("rnnjax.")].set_member(runtime.__qualname__, made)

    # -- looking objects up ------------------------------------------------------------------------
    def _lookup(self, path, follow=True):
        try:
            obj = self.pkg[path.removeprefix("rnnjax.")] if path != "rnnjax" else self.pkg
        except (KeyError, griffe.AliasResolutionError):
            canonical = self.public.get(path)
            if not follow or canonical is None or canonical == path:
                return None
            return self._lookup(canonical)
        if obj.is_alias:
            try:
                return obj.final_target
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return None
        return obj

    def _link(self, target, context):
        """The Markdown for a role's target: a cross-reference when it is rendered, else code."""
        shown = target.rsplit(".", 1)[-1] if "." in target else target
        candidates = [target, f"rnnjax.{target}"]
        module = context if context.is_module else context.module
        candidates.insert(0, f"{module.path}.{target}")
        if not context.is_module:
            candidates.insert(0, f"{context.path}.{target}")
            if context.parent is not None and context.parent.is_class:
                candidates.insert(0, f"{context.parent.path}.{target}")
        for candidate in candidates:
            obj = self._lookup(candidate) if candidate.startswith("rnnjax") else None
            if obj is None or not obj.has_docstring:  # undocumented members are not rendered
                continue
            path = obj.path
            owner, _, member = path.rpartition(".")
            if path in self.rendered:
                return f"[`{shown}`][{self.rendered[path]}]"
            parent = obj.parent
            if (
                owner in self.rendered
                and parent is not None
                and parent.is_class
                and member in parent.members
                and (not member.startswith("_") or member == "__call__")
            ):
                return f"[`{shown}`][{self.rendered[owner]}.{member}]"
        return f"`{target}`"

    # -- docstring text ----------------------------------------------------------------------------
    def _markdown(self, text, obj):
        text = ROLE.sub(lambda m: self._link(m.group(1), obj), text)

        def literal(match):
            body = inspect.cleandoc(
                "\n".join(line[4:] if line.startswith("    ") else line for line in match.group("body").splitlines())
            )
            lead = match.group("lead")
            lead = (lead + ":") if lead.strip() else ""
            return f"{lead}\n\n*A sketch (not run):*\n\n```python\n{body}\n```\n\n"

        return LITERAL.sub(literal, text + "\n").rstrip() + "\n"

    # -- classes -----------------------------------------------------------------------------------
    def _document_class(self, cls, runtime, public):
        found = _signature(runtime)
        if found is None:
            return
        signature, nnx_own = found
        init = cls.members.get("__init__")
        if init is None or init.is_alias or not isinstance(init, griffe.Function):
            init = griffe.Function("__init__", parent=cls, lineno=cls.lineno, endlineno=cls.lineno)
            cls.set_member("__init__", init)
        for parameter in signature.parameters.values():  # a linen field is an argument, not an attribute to list
            member = cls.members.get(parameter.name)
            if member is not None and not member.is_alias and member.is_attribute:
                cls.del_member(parameter.name)
        init.parameters = griffe.Parameters(
            griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
            *(_griffe_parameter(p) for p in signature.parameters.values()),
        )
        sections = list(cls.docstring.parsed) if cls.docstring else []
        if init.docstring is not None:
            sections += init.docstring.parsed
            init.docstring = None
        described = {}
        for section in sections:
            if section.kind is griffe.DocstringSectionKind.parameters:
                described.update({p.name: p.description for p in section.value})
        items = []
        for parameter in signature.parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            description = described.get(parameter.name)
            if description is None:
                description = NNX.get(parameter.name) if parameter.name in nnx_own else None
            if description is None:
                description = ARGUMENTS.get(parameter.name)
            if description is None:
                logger.warning(
                    "%s: argument `%s` has no description (an Args: section of its docstring, or "
                    "docs/_ext/arguments.py)",
                    public,
                    parameter.name,
                )
                description = ""
            items.append(
                griffe.DocstringParameter(
                    parameter.name,
                    description=description,
                    annotation=_annotation(parameter),
                    value=_default(parameter),
                )
            )
        sections = [s for s in sections if s.kind is not griffe.DocstringSectionKind.parameters]
        at = 1 if sections and sections[0].kind is griffe.DocstringSectionKind.text else 0
        sections.insert(at, griffe.DocstringSectionParameters(items))
        if cls.docstring is None:
            cls.docstring = griffe.Docstring("", parent=cls)
        cls.docstring.__dict__["parsed"] = sections


def _walk(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _signature(runtime):
    """``(signature, names of NNX's own arguments)``: the arguments a user passes to ``runtime`` (a
    class): a linen module's dataclass fields, an NNX layer's linen-twin fields and its own keyword
    arguments, or ``__init__``'s signature (``None`` without one)."""
    import flax.linen as nn

    if isinstance(runtime, type) and issubclass(runtime, nn.Module):
        parameters = [p for p in inspect.signature(runtime).parameters.values() if p.name not in FLAX_FIELDS]
        return inspect.Signature(parameters), set()
    linen = getattr(runtime, "linen_class", None)
    if linen is not None:
        from rnnjax.nnx import _args

        fields = _args.keras_fields(linen)
        names = [f.name for f in fields]
        last = getattr(runtime, "last_positional", names[-1])
        positional = names[: names.index(last) + 1] if last in names else names
        own = [p for p in inspect.signature(runtime.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
        own_names = {p.name for p in own}
        parameters = []
        for f in fields:
            if f.name in own_names:
                continue  # the NNX meaning wins (input_dim)
            default = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name in positional else inspect.Parameter.KEYWORD_ONLY
            parameters.append(inspect.Parameter(f.name, kind, default=default, annotation=f.type))
        return inspect.Signature(parameters + own, __validate_parameters__=False), own_names
    if "__init__" not in vars(runtime):
        return None
    parameters = list(inspect.signature(runtime.__init__).parameters.values())[1:]
    nnx_own = {p.name for p in parameters} if getattr(runtime, "__module__", "").startswith("rnnjax.nnx") else set()
    return inspect.Signature(parameters, __validate_parameters__=False), nnx_own


def _annotation(parameter):
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return TYPES.get(parameter.name)
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return TYPES.get(parameter.name, text) if text in ("Any", "typing.Any") else text


def _default(parameter):
    default = parameter.default
    if default is inspect.Parameter.empty:
        return None
    if isinstance(default, type):
        return f"{default.__module__.replace('jax.numpy', 'jnp')}.{default.__name__}"
    return repr(default)


def _griffe_parameter(parameter):
    kinds = {
        parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
        parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
        parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
        parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
        parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
    }
    return griffe.Parameter(
        parameter.name, kind=kinds[parameter.kind], annotation=_annotation(parameter), default=_default(parameter)
    )
