"""Providers: where calls go and how they are made.

:mod:`~llmbatch.providers.base` (values, failure classes, the Provider protocol),
:mod:`~llmbatch.providers.anyllm` (calls through any-llm, imported only when a call is to be made),
:mod:`~llmbatch.providers.workers` (the same calls, made by child processes).
"""
