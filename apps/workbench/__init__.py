"""The RM workbench: web pages of the API app for relationship managers (:mod:`apps.workbench.web`)."""
