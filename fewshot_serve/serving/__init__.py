"""Serving a model file: the adaptation API, the web app and its logins, the ONNX path; imports neither training nor data."""
