"""Imports every experiment module so that each registers itself."""
