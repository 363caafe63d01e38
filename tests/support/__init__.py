"""Test support shared by tests/ and e2e/: real gunicorn processes, scrapes, polling."""
