"""The one hand-off between training and serving: the model bundle's format and the MLflow registry.

Training writes bundles through :func:`write_bundle` and registers them through :mod:`bundle.registry`;
serving and the application layer read them through :func:`read_bundle` and the registry. Nothing here
imports torch or the trainer (MLflow is imported inside the registry's functions).
"""

from .format import SCHEMA_VERSION, Bundle, BundleError, read_bundle, write_bundle

__all__ = ["SCHEMA_VERSION", "Bundle", "BundleError", "read_bundle", "write_bundle"]
