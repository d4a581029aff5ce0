"""Prefect tasks: thin wrappers over the plain functions in mumu.data, mumu.train and mumu.eval."""
