"""One module per method. Every module of this package is imported (and so registers its method)
when the package is: a new method file needs no line here."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
