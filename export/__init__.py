"""precipfast.export"""
