"""The scoring API for campaign systems and RMs (issue 15): its security pieces (``security``: API keys,
audit log, rate and body limits, log redaction) and the ``nba keys`` commands (``keys_cli``).

Nothing is imported here, so ``import apps.api.keys_cli`` (and ``nba --help``) stays light.
"""
