"""precipfast.benchmarks"""
