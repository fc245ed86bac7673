"""Thin PySpark entry points: parse arguments, build the session, call ``graph``."""
