"""What the tests share, and the only place a test imports helpers from (a test module never imports
another's): `auth` (tokens), `database` (connections, settings, seed), `servers` (a live gunicorn and
its module fixture), `rawhttp` (requests byte by byte, and the tally of what clients received)."""
