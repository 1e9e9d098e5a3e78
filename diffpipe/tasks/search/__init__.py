"""Inference-time search and guidance of the sample stage: one module per method (registry.SEARCH_MODULES).

`run.SearchRun` binds a stage's `search` spec to its reward and data, and is what a domain's sampler
calls instead of the plain scheduler loop; `particles.py` holds what the continuous methods share.
"""
