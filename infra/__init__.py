"""Deployment tooling: dev PKI, broker configuration and definitions, local broker launcher.

Used by tests, the demo and operators; the runtime packages never import it.
"""
