"""The exit codes of `hanzo-registry`, written once: every command's --help epilog shows them and the README
repeats them."""

from __future__ import annotations

OK = 0
REFUSED = 1
USAGE = 2
UNREACHABLE = 3
INTERRUPTED = 130

EXIT_CODES = """\
\b
exit codes:
0  done (a server: stopped cleanly on SIGTERM or Ctrl-C)
1  a command that talks to a registry: the registry refused the request (denied, not found, bad
   credentials; its error is printed on one line), content did not match its digest, a signature did
   not verify (verify), gc run --wait: the run failed
2  bad usage or configuration: a bad reference, a missing or unreadable file, a bad option; a server
   that cannot start (a bad setting, a port in use, a data directory it cannot write, a backend that
   does not answer, a TLS file that does not load; one line on stderr names the setting and the fix)
3  the registry cannot be reached, or the connection was lost (and could not be resumed)
130 interrupted (Ctrl-C)
"""
