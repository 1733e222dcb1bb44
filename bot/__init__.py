"""Zapa's core: the normalized message model, the conversation engine and the web app."""

__version__ = "0.1.0"
