"""Scan results and the vulnerability database as stored in metadata, shared by the scanner (which writes
reports and inventories) and the distribution service (which serves them, gates pulls on them, queues
re-scans and imports OSV records). Services never import each other, so the stored shapes live here.

- `osv`: OSV records from an upload (JSON object or array, or an OSV export zip), bounded.
- `store`: the collections: vulnerability records and their import state, reports, re-scan requests.
"""
