"""Stores: what the processor reads events and subscriptions from and writes
jobs and progress to. ``base`` is the contract (roles, entries, the three
errors); each store is a package that implements it and is used through its
public names only. Importing the contract loads no store (``runner.open_store``
picks one). ``tests/stores/test_contract.py`` is the definition of a
correct store: a new store implements the roles and joins its fixture."""
