"""precipfast.train"""
