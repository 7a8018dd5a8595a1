"""efx's version (pyproject.toml's), in a module of its own: the modules that record it (an
output's attributes, efx serve's identity) import it without importing the package's API."""

__version__ = "0.4.0"
