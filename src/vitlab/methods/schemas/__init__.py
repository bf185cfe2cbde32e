"""The schemas of the built-in methods' ``method`` sections, one module per method module (``schemas/mugs.py`` for
``vitlab/methods/mugs.py``), importing only the standard library, omegaconf, :mod:`vitlab.config` and each other: no
torch. ``vitlab.config.method_config_class`` imports one of them for a built-in ``method.name``
(``vitlab.config.BUILTIN_METHOD_SCHEMAS``), so a recipe's mistake in the ``method`` section is reported in a fraction
of a second; the method modules import their schemas from here (docs/engine.md, "Methods and their schemas").

Importing this package imports none of them.
"""
