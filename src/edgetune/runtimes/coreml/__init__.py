"""Core ML (iOS): export with coremltools, and what can be verified of it without Apple's runtime
(export.py)."""

PACKAGE = "model.mlpackage"  # the ML Program, a folder tree an app compiles
