"""The package version (one place: ``pyaeplus.__version__``, ``build_config()``; pyproject.toml says the same)."""

__version__ = "0.1.0"
