"""edgeinfer: load, optimize and serve AI models on small machines."""

__version__ = "0.1.0"
