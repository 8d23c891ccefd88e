"""Signatures shared by the signer service and the distribution gateway: what a signature artifact looks like,
the signer's stored verification results, the pull gate that reads them, and managed signing keys.

The signer service (services/signer) discovers and verifies signatures and writes the results; the gateway
reads them (the signature gate, GET .../signatures) and signs with managed keys; both through this package,
since services never import each other.
"""
