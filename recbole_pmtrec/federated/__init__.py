"""PF-MSMTrec (personalized federated multi-scenario multi-task recommendation) and its baselines.

Scenario data (``scenarios``), the client model (``model``), the client (``client``), the federated config
(``config``) and the centralized reference (``centralized``); the contracts between the parts are in
``contracts``. Importing this package imports nothing heavy: import the submodule you need.
"""
