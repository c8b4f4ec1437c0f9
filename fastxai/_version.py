"""The package version, in a module of its own so that modules below the face can read it."""

__version__ = "0.1.0"
