"""The application layer: the only code that wires the stages together (the CLI today; the API app,
the RM workbench and the retrain orchestration next)."""
