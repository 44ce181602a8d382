"""The package's version, in a module of its own: the modules that name it (the CLI's
``--version``, hooks' User-Agent) need not import the package's ``__init__``, which imports them."""

__version__ = "0.1.0"
