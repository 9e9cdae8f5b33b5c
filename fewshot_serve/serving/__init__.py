"""Serving a model file: the adaptation API, the web app and its logins, the ONNX path.

Imports neither training nor data (tests/test_layers.py holds it).
"""
