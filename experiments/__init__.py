"""Experiments on the held-out cases (not installed with precipfast): run from the repository root as
`python -m experiments.NAME`. They measure the shipped model; nothing in the package imports them."""
