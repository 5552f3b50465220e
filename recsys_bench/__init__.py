"""The public recommender benchmark (``nba bench recsys``): dataset loaders, the published evaluation
protocols, and the harness that trains the project's models and their peers side by side.

Not part of the engine: it sits above ``training`` and nothing in production imports it.
"""
