"""Baseline TTT methods, registered in tempo_bench.methods."""
