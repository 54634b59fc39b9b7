#!/usr/bin/env python
"""Management entry point of the end-to-end chat site (see tests/test_django_e2e.py)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
