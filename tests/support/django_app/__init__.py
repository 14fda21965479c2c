"""A Django app for the tests of Django handlers (see support.apps): its models are made per test schema."""
