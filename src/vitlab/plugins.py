"""Method plugins: packages that add methods (``method.name`` values) register them through an entry point.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."vitlab.methods"]
    my_methods = "my_package.methods"

and the named module registers its methods with :func:`vitlab.methods.register_method` when imported. vitlab's own
methods are the entry point ``builtin = "vitlab.methods"``. :func:`load_method_plugins` imports them all once, when a
method is first needed or a ``method.name`` that is not a built-in method's is looked up (never at
``import vitlab.config``), so the configuration schemas stay free of the methods they describe. A built-in method's
schema comes from its torch-free module in ``vitlab.methods.schemas`` without importing any method.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

GROUP = "vitlab.methods"
BUILTIN = "vitlab.methods"

_loaded: list[str] | None = None  # the modules imported, once loaded


def load_method_plugins() -> list[str]:
    """Import every module of the ``vitlab.methods`` entry-point group (once); returns their names.

    The built-in methods are imported whether or not the metadata names them (a source checkout on ``PYTHONPATH``,
    or an editable install made before the entry point existed, has none): importing the package ``vitlab.methods``
    alone registers nothing, :func:`vitlab.methods.load_builtin_methods` imports its method modules.
    """
    global _loaded
    if _loaded is not None:
        return list(_loaded)
    found = list(entry_points(group=GROUP))
    names = [ep.value for ep in found]
    importlib.import_module(BUILTIN).load_builtin_methods()
    if BUILTIN not in names:  # no metadata for the group
        names.insert(0, BUILTIN)
    for ep in found:
        ep.load()
    _loaded = names
    return list(names)
