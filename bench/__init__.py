"""Benchmarks of cofisearch against faiss-cpu and NumPy (see README.md in this folder).

A package so that pytest imports ``bench.conftest`` under its own name: the test suite's
modules do ``from conftest import ...`` and must keep finding ``tests/conftest.py`` when
both folders are collected in one run.
"""
