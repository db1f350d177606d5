"""Helpers shared by the test modules: tiny configs, models, data folders and real runs of main.py."""
