"""precipfast.runtime"""
