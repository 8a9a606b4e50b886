"""precipfast.kernels"""
